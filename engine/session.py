"""A live session: generation thread -> decode thread -> ring buffer -> sound card, and a recorder.

Threads (docs/design.md §1): the generation thread owns the model and hands complete frames of codes to the
decode thread (engine/decode_worker.py), which runs the streaming EnCodec decoder and writes the PCM
to the ring and the recorder, so the next tokens are generated while the last chunk decodes; the
audio callback (or the null sink's clock) only copies from the ring; the recorder's writer thread
does all disk I/O; the caller's thread waits, reports status and may stop the session at any moment.
Output devices and the recording path are opened before anything is generated, so a wrong device or
an unwritable path fails at once with one line, and a recording is finalised however the session ends.
A real device that goes away mid-session does not end it: engine/audio_reconnect.py plays on the clock,
tells every surface (`notify`), and plays the device again when it returns.

How far generation runs ahead of playback is the delay between turning a knob and hearing it
(engine/latency.py measures it). A fixed `buffer_seconds` bounds it by the ring, plus the decode queue
(one decoder chunk of frames), a decoded chunk waiting for room, the decoder's lookahead and the
device. With "auto" (engine/lead.py) the generation thread paces each token instead (`_paced`):
it makes one only when the ring plus the frames the decode thread holds leave room for its audio
under the lead, so nothing waits outside the ring. When generation is slower than real time the
ring runs dry; `when_slow` chooses between `rebuffer` (stop playback until `prebuffer_seconds`, or
auto's lead if less, are queued again: a clean pause, counted) and `play` (keep playing whatever
arrives: zero-filled, counted underruns).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .audio_reconnect import open_output
from .decode_worker import DecodeWorker
from .events import Applied, Change, Event, MeterReading, Notice
from .latency import KnobLatency
from .lead import FAST_ENOUGH, SLOW_BUFFER_S, AutoLead, choose_chunk, margin_frames
from .levels import LevelHistory
from .loading import dtype_name
from .params import AUTO_BUFFER_MAX, PARAMS, check_settings, check_stream
from .ring_buffer import RingBuffer
from .session_stats import SessionStats, rate, status_of
from .streaming_decoder import StreamingConfig, StreamingDecoder
from .takes import Recordings, take_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from .generator import Frame, Generator


@dataclass
class StreamOptions:
    seconds: float | None = None  # None: until stop()
    output_device: str | int | None = None  # None: the system default; "null": no sound card
    buffer_seconds: float | str = PARAMS["buffer"].default  # queued ahead of playback; "auto": engine/lead.py
    prebuffer_seconds: float = 0.5  # queued before playback starts (and after a rebuffer)
    blocksize: int | str = PARAMS["blocksize"].default  # frames per device callback; "auto": engine/audio_out.py
    when_slow: str = "rebuffer"
    record: str | Path | None = None
    record_dir: str | Path | None = None  # where takes started live go (None: the working folder)
    overwrite: bool = False  # a take may replace an existing WAV and log of its name
    resample: bool = True  # resample when the device refuses the model's rate (else a clear error)
    decode_chunk_frames: int | None = None  # the streaming decoder's chunk; None: 5, or chosen here with auto


class StreamingSession:
    def __init__(self, gen: Generator, options: StreamOptions, prompt_codes: Tensor | None = None,
                 init_audio: dict | None = None, keep_codes: bool | int = False) -> None:
        # The same rows and bounds as the CLI's flags (params.SETTINGS): a library caller is held to them too.
        check_settings(when_slow=options.when_slow, seconds=options.seconds, buffer=options.buffer_seconds,
                       prebuffer=options.prebuffer_seconds, blocksize=options.blocksize)
        lm = gen.lm
        check_stream(options.buffer_seconds, options.prebuffer_seconds, options.blocksize, lm.sample_rate)
        self.gen, self.options, self.prompt_codes = gen, options, prompt_codes
        self.sample_rate, self.channels = lm.sample_rate, lm.audio_channels
        self.decoder = StreamingDecoder(lm, StreamingConfig(chunk_frames=options.decode_chunk_frames or 5))
        auto, buffer = options.buffer_seconds == "auto", options.buffer_seconds
        self.slow_decode: float | None = None  # auto asked, decoding too slow to pace finely: this fixed buffer
        if auto and options.decode_chunk_frames is None and choose_chunk(self.decoder) is None:
            auto, buffer = False, max(SLOW_BUFFER_S, options.prebuffer_seconds)  # too slow to pace finely
            self.slow_decode = buffer
        if auto:
            buffer = AUTO_BUFFER_MAX
        self.ring = RingBuffer(self.channels, math.ceil(buffer * lm.sample_rate), lm.sample_rate)
        # A real device that goes away is played on the clock and retried (engine/audio_reconnect.py).
        self.sink = open_output(options.output_device, self.ring, lm.sample_rate, self.channels, options.blocksize,
                                options.resample, self.notify)
        self.blocksize = self.sink.blocksize  # the block the device plays (auto: chosen by the sink)
        self.ring.add_room(self.blocksize)  # the callback's room beside what is queued
        try:  # a block known only now (auto) against the prebuffer
            check_stream(options.buffer_seconds, options.prebuffer_seconds, self.blocksize, self.ring.sample_rate)
        except BaseException:
            self.sink.stop()
            raise
        self.lead: AutoLead | None = None  # --buffer auto: the lead adjusted while playing
        if auto:
            write = math.ceil(self.decoder.config.chunk_frames * self.decoder.hop * self.ring.sample_rate
                              / lm.sample_rate)
            self.lead = AutoLead(self.ring, margin_frames(self.blocksize, self.ring.sample_rate), write)
        if options.when_slow == "rebuffer":
            self.ring.rebuffer_frames = round(options.prebuffer_seconds * self.ring.sample_rate)
            if self.lead is not None:
                self.ring.rebuffer_frames = self.lead.refill
        self.prompt_frames = 0 if prompt_codes is None else int(prompt_codes.shape[-1])
        self.init_audio = init_audio  # {"path", "sha256", "seconds"} of an audio prompt, for the log
        self.initial_controls = asdict(gen.control.values)
        self.control = gen.control  # controllers submit here (thread-safe): the one way in
        self.listeners = gen.listeners  # and learn here what was applied: the one way out
        # keep_codes: every frame (tests), or the last N (a long soak: its memory must stay flat)
        self._frames: collections.deque[Frame] | None = None if keep_codes is False else collections.deque(
            maxlen=None if keep_codes is True else int(keep_codes))
        self.listeners.add(self._record_event)
        self.notices: list[Notice] = []  # the last few, newest last
        self.notice_count = 0
        self.recordings = Recordings(self.sample_rate, self.channels, self.decoder.hop, self.log_header,
                                     lambda: self.gen.step_index, self.notify, options.record_dir, options.overwrite,
                                     prompt_frames=self.prompt_frames)
        gen.on_slide = self.recordings.slid  # a take resumes from the last slide before it, not the session's start
        # Checked now (one line before anything is generated), opened when the session runs: a start
        # that fails later (an OSC port in use) leaves no empty take behind to block the next try.
        self._first_take = take_path(options.record, None, options.overwrite) if options.record is not None else None
        self._stop = threading.Event()
        # Frames wait here between the threads (a fixed buffer: generation blocks while it is full; one
        # chunk keeps generating while a chunk decodes). With auto, _paced keeps it all but empty.
        self._decoding = DecodeWorker(self.decoder, self._emit, self._end_audio, self._stop, self._fail,
                                      depth=self.decoder.config.chunk_frames)
        self._decoding.prime(prompt_codes)  # a take continues the prompt's audio: no seam at its start
        self.levels = LevelHistory(lm.sample_rate)  # what is playing, for meters on surfaces
        self.knob_latency = KnobLatency(self.sink.clock, self.decoder.hop, lm.sample_rate, gen.delay.max_delay)
        self.error: BaseException | None = None
        self.generated_frames = 0
        self.busy_seconds = 0.0  # generation thread's token steps, excluding waits for queue room
        self._t_play: float | None = None
        self._t_start = time.monotonic()

    @property
    def codes(self) -> list[Tensor] | None:
        """With keep_codes: the codes of every frame kept and decoded so far, (K,) each, in order: what was
        played and recorded (generation runs ahead; frames it made past a stop were never heard).
        The first is new frame `codes_start` (0 unless keep_codes bounded them)."""
        decoded = self.recordings.emitted // self.decoder.hop + self.prompt_frames
        return None if self._frames is None else [f.codes[0] for f in list(self._frames) if f.index < decoded]

    @property
    def codes_start(self) -> int:
        """The new frame (counted as takes count, after an audio prompt) that `codes` starts at."""
        return self._frames[0].index - self.prompt_frames if self._frames else 0

    @property
    def lead_seconds(self) -> float:
        """Seconds queued ahead of the DAC: auto's lead now, else the fixed buffer (asked for, or auto's
        fallback where decoding is too slow to pace). The ring's one block more is the callback's room."""
        if self.lead is not None:
            return self.lead.seconds
        return self.slow_decode if self.slow_decode is not None else float(self.options.buffer_seconds)

    @property
    def step(self) -> int:
        """Tokens generated so far (the engine's clock: changes apply at these boundaries)."""
        return self.gen.step_index

    @property
    def applied(self) -> list[tuple[int, Change]]:
        """The changes applied since the oldest window slide a take could still resume from (every
        change, before the first slide), at their steps: engine/takes.py bounds what is kept."""
        return self.recordings.history

    @property
    def takes(self) -> list:
        """The session's takes (engine/takes.Take: path, error, seconds), finished ones first."""
        return self.recordings.takes

    def _record_event(self, event: Event) -> None:
        """The session's own listener: changes, meter readings and notices go to the current take's log."""
        if isinstance(event, Applied):
            self.knob_latency.applied(event.step, event.changes)
            for change in event.changes:
                self.recordings.applied(event.step, change)
        elif isinstance(event, MeterReading):
            self.recordings.describe(event.step, "meter", event.scores)
        elif isinstance(event, Notice):
            self.notices = [*self.notices[-7:], event]
            self.notice_count += 1
            self.recordings.describe(event.step, "notice", event.level, event.text)

    def notify(self, level: str, text: str) -> None:
        """Tell the performer (status line, OSC subscribers, the take's log), from any thread."""
        self.listeners.emit(Notice(self.gen.step_index, level, text))

    def log_header(self) -> dict:
        gen, lm = self.gen, self.gen.lm
        vectors = gen.vectors
        return {
            "model": lm.name, "model_fingerprint": lm.fingerprint, "dtype": dtype_name(lm.dtype),
            "engine_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "sample_rate": lm.sample_rate, "frame_rate": lm.frame_rate, "channels": lm.audio_channels,
            "seed": self.initial_controls["seed"], "prompt": self.initial_controls["prompt"],
            "controls": self.initial_controls, "settings": gen.settings,
            "vectors": str(vectors.path) if vectors is not None and vectors.path else None,
            "vectors_sha256": vectors.sha256 if vectors is not None else None,
            "init_audio": self.init_audio, "prompt_frames": self.prompt_frames,
        }

    def status(self) -> dict:
        """A snapshot for status lines and OSC subscribers (engine/session_stats.status_of)."""
        return status_of(self)

    def level(self) -> dict:
        """The level and spectrum of the audio playing now (engine/levels.py), from any thread."""
        ring = self.ring
        return self.levels.at(ring.frames_read * self.sample_rate // ring.sample_rate)

    # -- recording (thread-safe; OSC and the API call these mid-session: engine/takes.py) --------
    def start_recording(self, path: str | Path | None, live: bool = False) -> Path:
        """Start a take (ending the current one). live: confined to `record_dir`, named if unnamed."""
        return self.recordings.start(path, live)

    def stop_recording(self) -> Path | None:
        return self.recordings.stop()

    # -- running --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the session to end (thread- and signal-safe); run() then finalises everything."""
        self._stop.set()

    def run(self, on_status: Callable[[SessionStats], None] | None = None, interval: float = 0.5) -> SessionStats:
        """Generate and play until the requested seconds are played or stop() is called."""
        producer = threading.Thread(target=self._produce, name="musicsteer-generation", daemon=True)
        decoded = self._decoding.finished  # set when all PCM is emitted, or the session stopped
        self._t_start = time.monotonic()
        try:
            if self._first_take is not None:
                self.start_recording(self._first_take)
            if self.slow_decode is not None:
                self.notify("warning", f"decoding runs under {FAST_ENOUGH:g}× real time here: --buffer auto holds a "
                                       f"fixed {self.slow_decode:g} s")
            self.gen.start(self.prompt_codes)
            if self.options.seconds is not None:
                prompt = 0 if self.prompt_codes is None else self.prompt_codes.shape[-1]
                self.gen.set_end(prompt + max(1, round(self.options.seconds * self.gen.lm.frame_rate)))
            gen = self.gen
            if self.lead is not None and (gen.end_frame is None or gen.end_frame + gen.delay.max_delay >= gen.window):
                self.lead.plan_slides(gen.time_slide())  # paced, and the window will slide: plan for its stalls
            self._decoding.start()
            producer.start()
            prebuffer = round(self.options.prebuffer_seconds * self.ring.sample_rate)
            if self.lead is not None:  # the producer stops near the lead: never wait for more than that
                prebuffer = min(prebuffer, self.lead.refill)
            while self.ring.available < prebuffer and not decoded.is_set() and not self._stop.is_set():
                self._stop.wait(0.01)
            self._t_play = time.monotonic()
            self.sink.start()
            while not self._stop.is_set() and not (decoded.is_set() and self._drained()):
                self._stop.wait(interval)
                self._watch()
                if on_status is not None:
                    on_status(self.stats())
        finally:
            self._stop.set()  # both threads poll it: neither stays blocked on the queue or the ring
            # The device first: on a stop the ring would otherwise play dry while the threads finish
            # (up to 50 ms each), and that silence was counted as a dropout of the session.
            self.sink.stop()
            if producer.ident is not None:  # not started if gen.start() failed
                producer.join(timeout=30)
            self._decoding.join(timeout=30)
            # padded: the stream knew its end (--seconds) and padded it as generate does.
            self.recordings.close(padded=self.gen.end_frame is not None and self.gen.done,
                                  heard=self.knob_latency.summary())
            self.gen.prompts.close()
        if self.error is not None:
            raise self.error
        return self.stats()

    def _drained(self) -> bool:
        return self.ring.available == 0

    def _watch(self) -> None:
        """Between status updates: warn of a filling disk; end the session if the output failed (a
        consumer raised: what was made is recorded). A device that went away is not that: see the sink."""
        self.recordings.watch()
        self.knob_latency.update()  # while the DAC stamps of what was just played are still held
        if self.sink.error is not None and not self._stop.is_set():
            self.notify("error", self.sink.error)  # told once; run() returns, with stats.device_error set
            self._stop.set()

    def _produce(self) -> None:
        """The generation thread: one token per step; each complete frame goes to the decode thread."""
        try:
            if self.gen.lm.device.type == "cuda":
                torch.cuda.set_device(self.gen.lm.device)  # a new thread starts on device 0
            while not self._stop.is_set() and not self.gen.done:
                if not self._decoding.wait_for_room() or (self.lead is not None and not self._ending()
                                                          and not self._paced()):
                    return  # stopped while waiting
                began = time.perf_counter()
                frame = self.gen.step()
                if frame is not None:
                    self.generated_frames += 1
                    if self._frames is not None:
                        self._frames.append(frame)  # not frame.codes: reading them may wait for a GPU copy
                self.busy_seconds += time.perf_counter() - began
                if frame is not None and not self._decoding.put(frame):
                    return  # stopped while the queue was full
            if self.gen.done:
                self._decoding.close()  # the decode thread flushes the decoder and marks the ring's end
        except BaseException as err:  # noqa: BLE001 - reported by run() after the recording is safe
            self._fail(err)

    def _ending(self) -> bool:
        """The stream's last frames are near (--seconds): they are made unpaced, since the decoder's final
        flush decodes its lookahead in one call, which must not find the ring paced down to the lead."""
        gen, decoder = self.gen, self.decoder
        return (gen.end_frame is not None
                and gen.end_frame - gen.frames_completed <= decoder.lookahead_frames + decoder.config.chunk_frames)

    def _paced(self) -> bool:
        """--buffer auto, before each token: wait until its audio fits under the lead (False: stopped)."""
        per_frame = self.decoder.hop * self.ring.sample_rate / self.sample_rate  # ring frames a token adds
        worker = self._decoding
        return self.lead.wait_for_token(lambda: worker.in_flight, self.gen.steps_to_slide, per_frame, self._stop)

    def _fail(self, err: BaseException) -> None:
        """Either thread failed: stop the session; run() raises the first error once all is finalised."""
        if self.error is None:  # a later one is the other thread noticing the stop, not the cause
            self.error = err
        self._stop.set()

    def _emit(self, pcm: np.ndarray) -> None:
        """The decode thread: PCM to the ring (what fits now), to the current take, then the rest to the
        ring (waiting for room). The ring first: the take and the level meter took 0.4 ms a chunk in a session here,
        and under --buffer auto every ms before the write is a ms more of lead (engine/lead.py); the take
        still gets every chunk, even one a stop leaves unplayed."""
        if (lead := self.lead) is not None:  # --buffer auto: the generation thread paces itself (_paced)
            lead.update()
            if self.ring.rebuffer_frames:
                self.ring.rebuffer_frames = lead.refill
        rest = pcm[:, self.sink.write(pcm) if self.sink.error is None else 0 :]
        self.recordings.write(pcm)
        self.levels.add(pcm)
        while rest.shape[1] and not self._stop.is_set() and self.sink.error is None:
            self.sink.wait_for_space(rest.shape[1], timeout=0.1)
            rest = rest[:, self.sink.write(rest) :]

    def _end_audio(self) -> None:
        """The decode thread, after the decoder's last flush: the resampler's tail, then the ring's end.
        Waits for room, not for playback (the device may not have started: a take shorter than the prebuffer)."""
        while not self.sink.finish(timeout=0.1) and not self._stop.is_set() and self.sink.error is None:
            pass

    def stats(self) -> SessionStats:
        now = time.monotonic()
        generated = self.decoder.samples_out / self.sample_rate
        generation_rtf = rate(self.generated_frames / self.gen.lm.frame_rate, self.busy_seconds)
        decode_rtf = rate(generated, self._decoding.busy_seconds)
        ring, sink, take = self.ring, self.sink, self.recordings.current
        return SessionStats(
            step=self.gen.step_index,
            generated_seconds=generated,
            played_seconds=ring.frames_read / ring.sample_rate,
            elapsed_seconds=now - self._t_start,
            rtf=min((r for r in (generation_rtf, decode_rtf) if r > 0), default=0.0),
            buffer_seconds=ring.seconds,
            underrun_events=ring.underrun_events,
            underrun_seconds=ring.underrun_frames / ring.sample_rate,
            rebuffers=ring.rebuffer_events,
            callbacks=self.sink.callbacks,
            recording=str(take.path) if take is not None else None,
            generation_rtf=generation_rtf,
            decode_rtf=decode_rtf,
            control_counts=self.control.counts,
            xruns=sink.output_underflows,
            callback_errors=sink.callback_errors,
            idle_seconds=ring.idle_frames / ring.sample_rate,
            recording_error=self.recordings.error,
            device_error=sink.error,
            device_lost=getattr(sink, "lost", None),
            device_losses=getattr(sink, "losses", 0),
            device_returns=getattr(sink, "returns", 0),
            heard=self.knob_latency.summary(),
            notices=self.notice_count,
        )
