"""Knob → heard, measured: the DAC clock's bookkeeping, a known ring frame found at its DAC time in a real
PortAudio stream, and a live session reporting what its buffer makes it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from jack import jack_server

from musicsteer.engine.audio_devices import resolve_output_device
from musicsteer.engine.audio_out import PortAudioSink
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Change
from musicsteer.engine.generator import Generator
from musicsteer.engine.latency import DacClock, KnobLatency
from musicsteer.engine.ring_buffer import RingBuffer
from musicsteer.engine.session import StreamingSession, StreamOptions

RATE = 32000
HOP = 640


def test_the_dac_clock_places_every_frame_in_the_block_that_played_it() -> None:
    clock = DacClock(RATE, size=8)
    assert clock.heard_at(0) is None  # nothing played yet
    for k, start in enumerate([0, 0, 100, 356, 356, 612]):  # two idle blocks (nothing read), then data
        clock.mark(start, 10.0 + k * 0.008)
    assert clock.heard_at(0) == pytest.approx(10.008)  # read by block 1 (block 0 read nothing)
    assert clock.heard_at(99) == pytest.approx(10.008 + 99 / RATE)
    assert clock.heard_at(100) == pytest.approx(10.016)
    assert clock.heard_at(400) == pytest.approx(10.032 + 44 / RATE)  # after a starved block (3 read nothing)
    assert clock.heard_at(612) is None  # in the newest block: not known to be played until the next
    for k in range(20):  # the ring of stamps wraps: old frames are forgotten, never misplaced
        clock.mark(612 + 256 * k, 11.0 + k * 0.008)
    assert clock.heard_at(0) is None and clock.heard_at(612 + 256 * 15 + 3) == pytest.approx(11.12 + 3 / RATE)


def test_knob_latency_counts_from_arrival_to_the_first_frame_completed_after_the_change() -> None:
    clock = DacClock(48000)
    latency = KnobLatency(clock, hop=640, model_rate=RATE, delay=3)
    latency.applied(10, [Change("alpha", 0.5, arrived=5.0), Change("seed", 1)])  # a scheduled one: no arrival
    index = (10 - 3) * 640 * 48000 // RATE  # frame 7, at the device's rate
    clock.mark(0, 5.1)
    clock.mark(index - 10, 5.3)
    assert latency.summary() == {}  # not played yet
    clock.mark(index + 1000, 5.4)
    assert latency.summary() == {"median_ms": pytest.approx(300.0 + 10 / 48, abs=0.1), "p95_ms": pytest.approx(
        300.2, abs=0.1), "changes": 1}


class _SpikeFinder(PortAudioSink):
    """A real PortAudio sink that also notes, from inside its callback, where a marked sample came out."""

    spike_at: float | None = None

    def _callback(self, outdata, frames, time_info, status) -> None:
        super()._callback(outdata, frames, time_info, status)
        hits = np.flatnonzero(outdata[:, 0] > 0.5)
        if hits.size and self.spike_at is None:
            delay = time_info.outputBufferDacTime - time_info.currentTime
            self.spike_at = time.monotonic() + (delay if 0 < delay < 2 else self.latency) + hits[0] / self.device_rate


def test_a_frame_at_a_known_index_is_reported_heard_at_its_dac_time() -> None:
    with jack_server(RATE, period=256):
        ring = RingBuffer(1, RATE, RATE)
        sink = _SpikeFinder(resolve_output_device("system"), ring, RATE, 1, blocksize=256, resample=False)
        quiet = np.zeros((1, 5000), np.float32)
        sink.write(quiet)
        sink.start()
        try:
            time.sleep(0.3)  # the ring runs dry: an underrun gap the clock must not count as frames
            spike = np.zeros((1, 3000), np.float32)
            spike[0, 1234] = 1.0
            sink.write(quiet[:, :777])
            sink.write(spike)
            sink.write(quiet)
            assert sink.drain(timeout=5)
        finally:
            sink.stop()
        index = 5000 + 777 + 1234
        print(f"spike at ring frame {index}: callback saw it at {sink.spike_at:.6f}, "
              f"clock says {sink.clock.heard_at(index):.6f}; underruns {sink.underrun_events}")
        assert sink.underrun_events == 1 and sink.spike_at is not None
        assert sink.clock.heard_at(index) == pytest.approx(sink.spike_at, abs=0.002)


@pytest.mark.parametrize("buffer", [1.0, 0.25])
def test_a_live_session_reports_what_its_buffer_makes_the_knob_wait(tiny, buffer: float) -> None:
    """The measurement is right either way: with a 1 s buffer a knob is heard after about the buffer plus
    the decoder's lookahead and chunk; with a quarter second, that much less."""
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(seconds=6.0, output_device="null", buffer_seconds=buffer,
                                             prebuffer_seconds=min(0.5, buffer), blocksize=256))

    def performer() -> None:
        time.sleep(1.0)
        for i in range(6):
            session.control.submit(Change("guidance", 2.0 + i / 4))
            time.sleep(0.4)

    threading.Thread(target=performer, daemon=True).start()
    stats = session.run()
    heard = stats.heard
    print(f"--buffer {buffer}: knob→heard {heard}")
    assert heard["changes"] == 6 and stats.underrun_events == 0
    # the buffer, the decode queue (5 frames), the decoder's lookahead (4) and chunk (up to 5), the device block
    assert buffer + 0.08 < heard["median_ms"] / 1000 < buffer + 0.45
    assert session.status()["heard_p95_ms"] == heard["p95_ms"]


def test_the_auto_lead_grows_at_once_near_a_dropout_and_shrinks_slowly_in_calm() -> None:
    from musicsteer.engine import lead as lead_module
    from musicsteer.engine.lead import AutoLead

    ring = RingBuffer(1, 2 * RATE, RATE)
    lead = AutoLead(ring, margin_frames=512, write_frames=640, start_s=0.1)
    assert lead.frames == 3200 and lead.refill == 3200 - 640
    ring.low_water = 100  # a read left fewer than the margin: a near miss, grow now by the shortfall and a block
    lead.update()
    assert lead.frames == 3200 + 412 + 256 and lead.grown == 1
    ring.low_water = -300  # a read found the ring dry: grow by the shortfall and half the lead again
    lead.update()
    assert lead.frames == 3868 + 812 + 3868 // 2 and lead.grown == 2
    for _ in range(3):  # calm, but within one period: no change
        ring.low_water = 4000
        lead.update()
    assert lead.frames == 6614 and lead.shrunk == 0
    lead._quiet_since -= lead_module.PERIOD_S  # a calm period has passed: give up a third of what was unused
    ring.low_water = 4000
    lead.update()
    assert lead.frames == 6614 - (4000 - 512) // 3 and lead.shrunk == 1
    for _ in range(200):  # long calm with the ring never touched: down to the floor, never below it
        lead._quiet_since -= lead_module.PERIOD_S
        ring.low_water = lead.frames - 1
        lead.update()
    assert lead.frames == lead.low == max(round(0.02 * RATE), 512 + 640)


def test_before_a_window_slide_the_lead_makes_room_for_its_stall() -> None:
    from musicsteer.engine.lead import SLIDE_SAFETY, AutoLead

    ring = RingBuffer(1, RATE, RATE)
    lead = AutoLead(ring, margin_frames=512, write_frames=640, start_s=0.05)
    assert lead.allowed(0, 640.0) == lead.frames  # no slide planned: the lead, whatever comes
    lead.plan_slides(0.07)  # a re-prefill timed at 70 ms
    extra = round(SLIDE_SAFETY * 0.07 * RATE) + 512
    assert lead.slide_frames == extra
    reach = extra / 640 + 2  # tokens ahead of the slide from which the extra may be queued
    assert lead.allowed(int(reach) + 1, 640.0) == lead.frames
    assert lead.allowed(int(reach), 640.0) == lead.allowed(0, 640.0) == lead.frames + extra


def test_timing_a_slide_changes_no_code(tiny) -> None:
    """time_slide writes padding into the cache before the first step: the tokens must not see it."""
    runs = []
    for timed in (False, True):
        gen = Generator(tiny, Controls(prompt="rock", top_k=0, temperature=0.0))
        gen.start()
        if timed:
            assert gen.time_slide() > 0
        runs.append(torch.stack([f.codes[0] for _ in range(60) if (f := gen.step()) is not None], dim=-1))
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(RuntimeError, match="between start"):
        gen.time_slide()


def test_buffer_auto_paces_the_token_so_nothing_made_waits_outside_the_ring(tiny) -> None:
    """What is made but not yet heard is the ring, the frames the decode thread holds and the decoder's
    lookahead; with --buffer auto the first two together never pass the lead (a frame waiting in the
    queue, or a decoded chunk waiting for room, would add to every knob's delay)."""
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(seconds=5.0, output_device="null", buffer_seconds="auto", blocksize=256))
    ring, decoder, lead = session.ring, session.decoder, session.lead
    assert decoder.lookahead == decoder.reach  # exact, to the sample (engine/streaming_decoder.py)
    over: list[tuple[int, int]] = []

    def sample() -> None:
        while not session._stop.is_set():
            allowed, made = lead.allowed(session.gen.steps_to_slide, HOP), session.generated_frames
            if not session._ending():
                queued = made * HOP - decoder.lookahead - ring.frames_read  # in the ring or the decode thread
                if queued > allowed + HOP:  # one frame of slack: the token in hand when sampled
                    over.append((queued, allowed))
            time.sleep(0.003)

    threading.Thread(target=sample, daemon=True).start()
    stats = session.run()
    assert stats.played_seconds == pytest.approx(5.0, abs=0.05) and not over, over[:5]


def test_buffer_auto_finds_a_smaller_lead_and_the_knob_is_heard_sooner(tiny) -> None:
    """The null device's clock, a chunk chosen for this machine, a lead that shrinks from 0.1 s while the
    ring never runs low; the knob is heard far sooner than with the fixed 1 s buffer (about 1.27 s)."""
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(seconds=8.0, output_device="null", buffer_seconds="auto", blocksize=256))
    assert session.lead is not None and session.decoder.config.chunk_frames in (1, 2, 5)

    def performer() -> None:
        time.sleep(1.0)
        for _ in range(10):
            session.control.submit(Change("alpha", 0.4))
            time.sleep(0.5)

    threading.Thread(target=performer, daemon=True).start()
    stats = session.run()
    print(f"auto: chunk {session.decoder.config.chunk_frames}, lead {session.lead.seconds * 1000:.0f} ms "
          f"(grown {session.lead.grown}, shrunk {session.lead.shrunk}), underruns {stats.underrun_events}, "
          f"knob→heard {stats.heard}")
    assert session.lead.shrunk > 0 and session.status()["lead"] == round(session.lead.seconds, 3)
    assert stats.heard["changes"] == 10 and stats.heard["median_ms"] < 450


def test_status_and_plays_summary_give_one_lead(tiny) -> None:
    """`/musicsteer/status`'s lead, the bench's lead_s and play's summary are one figure (session.lead_seconds):
    a fixed buffer is the buffer asked for, not the ring's capacity (which holds one device block more)."""
    from musicsteer.commands.play import buffering

    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(seconds=1.0, output_device="null", buffer_seconds=0.5, blocksize=256))
    assert session.ring.capacity == 0.5 * RATE + 256
    assert session.status()["lead"] == session.lead_seconds == 0.5
    assert buffering(session) == "buffer 0.50 s, decoder chunk 5 frames, device block 256"


def test_a_change_whose_stamp_is_gone_is_counted_lost_and_never_blocks_later_ones() -> None:
    clock = DacClock(RATE, size=4)
    latency = KnobLatency(clock, hop=640, model_rate=RATE, delay=3)
    latency.applied(5, [Change("alpha", 0.1, arrived=1.0)])  # frame 2: ring frame 1280
    latency.applied(120, [Change("alpha", 0.2, arrived=2.0)])  # frame 117: ring frame 74880
    for k in range(40):  # played on, with nobody looking: the first change's stamp is overwritten
        clock.mark(1024 * k, 1.5 + k * 0.032)
    assert latency.summary() == {} and latency.lost == 1  # the second is not played yet: still waited for
    for k in range(40, 76):  # block 73 plays ring frame 74880; the last four stamps are 72..75
        clock.mark(1024 * k, 1.5 + k * 0.032)
    assert latency.summary()["changes"] == 1 and latency.lost == 1
    assert latency.seconds[0] == pytest.approx(1.5 + 73 * 0.032 + (74880 - 73 * 1024) / RATE - 2.0)


def test_the_lead_keeps_a_margin_of_two_blocks_and_never_less_than_its_floor() -> None:
    """Two 16-frame blocks (1 ms) ran dry on jitter (the hostile review): the margin has a floor in time."""
    from musicsteer.engine.lead import MARGIN_S, margin_frames

    assert margin_frames(256, RATE) == 512 == round(MARGIN_S * RATE)
    assert margin_frames(16, RATE) == 512 and margin_frames(1024, RATE) == 2048
    assert margin_frames(16, 48000) == round(MARGIN_S * 48000)


def test_auto_starts_at_its_lead_so_a_big_block_needs_no_bigger_prebuffer() -> None:
    """--buffer auto refills to its lead (two blocks at least), not the prebuffer: the default prebuffer
    (0.5 s) is no reason to refuse a 16384-frame block there, as it is for a fixed buffer."""
    from musicsteer.engine.errors import OutOfRange
    from musicsteer.engine.params import check_stream

    check_stream("auto", 0.5, 16384, RATE)
    with pytest.raises(OutOfRange, match="at least one audio block"):
        check_stream(1.0, 0.5, 16384, RATE)


def test_a_stopped_session_stops_the_device_before_it_waits_for_its_threads(tiny) -> None:
    """On a stop the device stops first: while the generation and decode threads finish (each polls the
    stop every 50 ms) nothing more is read, so an auto lead's ~40 ms ring does not play dry into a
    dropout the performer never had (it was counted in 3 runs of 3)."""
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(seconds=None, output_device="null", buffer_seconds="auto", blocksize=256))
    reads_while_joining: list[int] = []
    join = session._decoding.join

    def joined(timeout: float) -> None:
        before = session.sink.callbacks
        time.sleep(0.1)  # longer than a device block: a running device would have read meanwhile
        reads_while_joining.append(session.sink.callbacks - before)
        join(timeout)

    session._decoding.join = joined
    threading.Timer(1.5, session.stop).start()
    stats = session.run()
    assert stats.played_seconds > 0.5 and reads_while_joining == [0]
