"""`--buffer auto`: the least lead over playback that keeps the sound whole, found while playing.

The audio queued in the ring ahead of the DAC is most of the delay between a turned knob and the
ear (engine/latency.py measures the whole). A fixed `--buffer` must be sized for the slowest moment;
auto measures instead. The ring notes the lowest fill its reads reach (`RingBuffer.low_water`); the
producer looks at it after each chunk it queues:
  - the ring ran dry: grow at once, by the shortfall and half the lead again, so one slow moment
    does not become a run of underruns;
  - it came within `margin` of running dry: grow at once by the shortfall and half the margin (one
    device block, or 8 ms where the margin's floor below applies). A
    near miss is not a dropout: growing by half the lead there kept the lead (and the knob's delay)
    30 ms high for seconds after every scheduling hiccup (measured: knob → heard p95 175-196 ms
    against 148 with this rule, and no more underruns; docs/benchmarks.md);
  - otherwise, every `PERIOD_S` of quiet: shrink by a third of the room the ring never used,
    keeping the margin — slowly, so a lead that was just enough is not given up at the first calm.
Bounds: `LOW_S` (one frame) to `params.AUTO_BUFFER_MAX`. The margin is two device blocks (the low-water
mark is taken after a read, and a host may ask for two blocks in a row: JACK through PortAudio does),
and never less than `MARGIN_S`: two 16-frame blocks (1 ms) ran dry on this machine's jitter.

A window slide (engine/generator.py: every 18 s past the first 30 s, the last 12 s are re-prefilled in
one call) stalls generation for many tokens' time: 65-72 ms for the tiny model on this 2-core CPU,
more than the lead that suits every other token. It comes at a known step, so it is planned for, not
waited out: the session times one re-prefill before the first token (`Generator.time_slide`), and in
the tokens before each slide the producer may queue `SLIDE_SAFETY` times that much more (`allowed`),
so the ring plays through the stall and then drains back to the lead.

The streaming decoder's lookahead and chunk are the other part of the delay. The lookahead is the
decoder's exact reach, 2402 samples (75 ms) for the 32 kHz decoder, emitted to the sample (the 2560
of whole frames before): above any fidelity floor, and a shorter one that keeps ≥ 30 dB would gain
only 2.5 ms (engine/streaming_decoder.py says why it is not taken). `choose_chunk` times the decoder
here and takes the smallest chunk that decodes well ahead of real time: 1 frame (20 ms) on a fast machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .params import AUTO_BUFFER_MAX
from .ring_buffer import RingBuffer

if TYPE_CHECKING:
    from .streaming_decoder import StreamingDecoder

LOW_S = 0.02  # one frame of MusicGen's 50 Hz: less than this is never worth the risk
START_S = 0.05  # where a session starts, before anything is measured: near where it settles on this CPU
PERIOD_S = 0.25  # seconds of quiet between two shrinks (1 s kept a lead grown by a hiccup for seconds)
SLIDE_SAFETY = 2.0  # a slide's re-prefill beside the decode thread: 1.5x the one timed alone at start, measured
MARGIN_S = 0.016  # the least margin, whatever the block: 1 ms (two 16-frame blocks) ran dry on jitter


def margin_frames(blocksize: int, rate: int) -> int:
    """The margin above empty the lead keeps: two device blocks (a host may ask for two in a row), and
    at least MARGIN_S of audio (a small block's two are less than this machine's jitter)."""
    return max(2 * blocksize, round(MARGIN_S * rate))


class AutoLead:
    """The lead, in ring frames, the producer keeps queued (`frames`), adjusted as the ring is read."""

    def __init__(self, ring: RingBuffer, margin_frames: int, write_frames: int, start_s: float = START_S) -> None:
        self.ring, self.margin = ring, margin_frames
        self.write_frames = write_frames  # the most one write adds (a decoder chunk, in ring frames)
        rate = ring.sample_rate
        self.low = max(round(LOW_S * rate), margin_frames + write_frames)
        self.high = max(self.low, min(round(AUTO_BUFFER_MAX * rate), ring.capacity))
        self.frames = min(max(round(start_s * rate), self.low), self.high)
        self.grown = self.shrunk = 0  # adjustments made (status, benchmarks)
        self.slide_frames = 0  # ring frames more to queue before a window slide (plan_slides)
        self._quiet_since = time.monotonic()
        self._period_low = ring.low_water = ring.capacity

    @property
    def refill(self) -> int:
        """Frames to queue before playing (at the start, after a dropout): what the producer surely
        reaches, since it stops when one more write would pass the lead."""
        return max(self.frames - self.write_frames, self.margin)

    def plan_slides(self, slide_seconds: float) -> None:
        """A window slide stalls generation `slide_seconds` (timed here): queue that much more before one."""
        self.slide_frames = round(SLIDE_SAFETY * slide_seconds * self.ring.sample_rate) + self.margin

    def allowed(self, steps_to_slide: int, frame: float) -> int:
        """Ring frames that may be queued (played or still decoding) once the next token's audio is added:
        the lead, and before a slide the slide's stall too, from as many tokens ahead as it takes to
        queue it (`frame`: ring frames one token adds)."""
        if self.slide_frames and steps_to_slide <= self.slide_frames / frame + 2:
            return min(self.frames + self.slide_frames, self.ring.capacity)
        return self.frames

    def wait_for_token(self, in_flight: Callable[[], int], steps_to_slide: int, frame: float,
                       stop: threading.Event) -> bool:
        """The producer, before a token: wait until the ring plus the frames the decode thread still holds
        (`in_flight()`, `frame` ring frames each) leave room for one more frame under `allowed`. Pacing
        the token, not the ring (a frame waiting in the queue, a decoded chunk waiting for room), keeps
        everything made but not heard in the ring, where the lead counts it. False once `stop` is set."""
        ring = self.ring
        while not stop.is_set():  # re-read each time round: the decode thread adjusts the lead meanwhile
            allowed = self.allowed(steps_to_slide, frame)
            if ring.wait_until_at_most(round(allowed - (in_flight() + 1) * frame), timeout=0.005):
                return True
            if ring.failure is not None:  # the device is gone: the session ends it; do not spin meanwhile
                stop.wait(0.05)
        return False

    def update(self) -> None:
        """Look at the ring's low-water mark since the last look, and adjust (the decode thread, per chunk)."""
        ring, now = self.ring, time.monotonic()
        low, ring.low_water = ring.low_water, ring.capacity
        self._period_low = min(self._period_low, low)
        if low < self.margin:  # came close to running dry, or ran dry
            cushion = self.frames // 2 if low < 0 else self.margin // 2
            self.frames = min(self.high, self.frames + (self.margin - low) + cushion)
            self.grown += 1
            self._quiet_since, self._period_low = now, ring.capacity
        elif now - self._quiet_since >= PERIOD_S:
            unused = self._period_low - self.margin  # the room no read needed in the whole period
            if self._period_low < ring.capacity and unused > 0:
                self.frames = max(self.low, self.frames - max(1, unused // 3))
                self.shrunk += 1
            self._quiet_since, self._period_low = now, ring.capacity

    @property
    def seconds(self) -> float:
        return self.frames / self.ring.sample_rate


CHUNKS = (1, 2, 5)  # decoder chunks tried, smallest (least delay) first; 5 is the fixed buffer's
SLOW_BUFFER_S = 1.0  # what auto holds, fixed, where no chunk decodes FAST_ENOUGH (the default of old)
FAST_ENOUGH = 3.0  # decode this many times faster than real time: it shares the CPU with generation


def choose_chunk(decoder: StreamingDecoder, frames: int = 15) -> int | None:
    """The smallest decoder chunk (frames) whose decode runs FAST_ENOUGH × real time on this machine,
    timed on `frames` frames of random codes, set on the decoder and returned; None (the largest set) when
    none does: too slow a machine to pace finely. The decoder is reset after (prime it, if at all, later)."""
    import torch

    codes = torch.randint(0, 1024, (decoder.num_codebooks, frames), generator=torch.Generator().manual_seed(0))
    chosen = None
    for chunk in CHUNKS:
        decoder.reset()
        decoder.config.chunk_frames = chunk
        decoder.push(codes[:, :chunk + decoder.lookahead_frames])  # warm-up: the first call costs more
        began = time.perf_counter()
        for i in range(chunk + decoder.lookahead_frames, frames):
            decoder.push(codes[:, i : i + 1])
        took = time.perf_counter() - began
        audio = (frames - chunk - decoder.lookahead_frames) * decoder.frame_ms / 1000
        if took <= 0 or audio / took >= FAST_ENOUGH:
            chosen = chunk
            break
    decoder.reset()
    decoder.config.chunk_frames = chosen or CHUNKS[-1]
    return chosen
