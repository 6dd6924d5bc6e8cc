"""Ring buffer units, and real playback: PortAudio through a JACK dummy server (killed mid-playback too),
and the null sink."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from jack import jack_server

from musicsteer.engine.audio_devices import list_output_devices, resolve_output_device
from musicsteer.engine.audio_out import NullSink, PortAudioSink, open_sink
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.ring_buffer import RingBuffer

RATE = 32000
BLOCK = 1024


def ramp(channels: int, start: int, n: int) -> np.ndarray:
    """(channels, n) frames whose values name their position, so any misplaced frame shows."""
    idx = np.arange(start, start + n, dtype=np.float32)
    return np.stack([idx + 0.25 * c for c in range(channels)])


def sine(seconds: float, rate: int = RATE, channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.repeat(0.2 * np.sin(2 * np.pi * 440 * t)[np.newaxis], channels, axis=0).astype(np.float32)


# ---- ring buffer --------------------------------------------------------------------------------
def test_ring_wraps_around_and_keeps_frames_whole() -> None:
    ring = RingBuffer(channels=2, capacity=10, sample_rate=RATE)
    assert ring.write(ramp(2, 0, 7)) == 7
    out = np.empty((5, 2), np.float32)
    assert ring.read_into(out) == 5
    np.testing.assert_array_equal(out, ramp(2, 0, 5).T)
    assert ring.write(ramp(2, 7, 7)) == 7  # crosses the end of the storage
    out = np.empty((9, 2), np.float32)
    assert ring.read_into(out) == 9
    np.testing.assert_array_equal(out, ramp(2, 5, 9).T)
    assert ring.available == 0 and ring.underrun_events == 0


def test_ring_overfill_writes_what_fits() -> None:
    ring = RingBuffer(channels=1, capacity=10, sample_rate=RATE)
    assert ring.write(ramp(1, 0, 15)) == 10
    assert ring.space == 0 and ring.write(ramp(1, 15, 3)) == 0
    assert ring.seconds == pytest.approx(10 / RATE)
    out = np.empty((10, 1), np.float32)
    ring.read_into(out)
    np.testing.assert_array_equal(out[:, 0], np.arange(10))  # the oldest frames, none overwritten


def test_ring_underrun_zero_fills_and_counts_dropouts() -> None:
    ring = RingBuffer(channels=2, capacity=16, sample_rate=RATE)
    out = np.full((8, 2), 9.0, np.float32)
    assert ring.read_into(out) == 0  # nothing written yet: start-up silence, not an underrun
    assert not out.any() and ring.idle_frames == 8 and ring.underrun_events == 0
    ring.write(ramp(2, 0, 3))
    out[:] = 9.0
    assert ring.read_into(out) == 3
    np.testing.assert_array_equal(out[:3], ramp(2, 0, 3).T)
    assert not out[3:].any()
    ring.read_into(out)  # still starved: the same dropout
    assert (ring.underrun_events, ring.underrun_frames) == (1, 13)
    ring.write(ramp(2, 3, 8))
    ring.read_into(out)
    ring.read_into(out)  # a second dropout
    assert (ring.underrun_events, ring.underrun_frames) == (2, 21)
    ring.write(ramp(2, 0, 2))
    ring.mark_end()
    ring.read_into(out)  # the tail after the producer finished is expected silence
    assert (ring.underrun_events, ring.underrun_frames, ring.idle_frames) == (2, 21, 14)
    assert ring.frames_read + ring.underrun_frames + ring.idle_frames == 6 * 8


def test_ring_rebuffers_after_a_dropout_until_the_prebuffer_is_back() -> None:
    ring = RingBuffer(channels=1, capacity=64, sample_rate=RATE)
    ring.rebuffer_frames = 20
    out = np.zeros((8, 1), np.float32)
    ring.write(ramp(1, 0, 8))
    assert ring.read_into(out) == 8
    assert ring.read_into(out) == 0 and (ring.underrun_events, ring.rebuffer_events) == (1, 1)
    ring.write(ramp(1, 8, 12))  # 12 queued < 20: playback stays paused, nothing is consumed
    assert ring.read_into(out) == 0 and ring.available == 12
    ring.write(ramp(1, 20, 8))  # 20 queued: playback resumes exactly where it stopped
    assert ring.read_into(out) == 8
    np.testing.assert_array_equal(out[:, 0], np.arange(8, 16))
    assert ring.read_into(out) == 8 and ring.read_into(out) == 4  # plays down to empty: a new dropout
    assert (ring.underrun_events, ring.rebuffer_events) == (2, 2)


def test_ring_read_into_allocates_nothing() -> None:
    # Blocks of 1024 frames: a copy of the block (8 KiB) is what this must catch; with 64-frame blocks (512 B)
    # the Python objects a call makes and frees (an ndarray view, a float, an int) peaked at 520 B under load.
    calls, frames = 2_000, 1024
    ring = RingBuffer(channels=2, capacity=calls * frames, sample_rate=RATE)
    ring.write(np.ones((2, calls * frames // 2), np.float32))  # the second half of the calls underruns
    out = np.empty((frames, 2), np.float32)
    ring.read_into(out)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(calls - 1):
            ring.read_into(out)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ring.underrun_events == 1 and ring.frames_read == calls * frames // 2
    assert after - before < 1024, f"read_into grew memory by {after - before} bytes"
    assert peak - before < out.nbytes, f"read_into allocated {peak - before} bytes at its peak"


def test_wait_for_space_times_out_then_wakes_when_consumed() -> None:
    ring = RingBuffer(channels=1, capacity=1000, sample_rate=RATE)
    ring.write(np.zeros((1, 1000), np.float32))
    assert ring.wait_for_space(10, timeout=0.05) is False
    threading.Timer(0.05, ring.read_into, args=(np.empty((500, 1), np.float32),)).start()
    assert ring.wait_for_space(400, timeout=2.0) is True
    with pytest.raises(ValueError):
        ring.wait_for_space(1001)


class Clocked:
    """A fake clock for ring_buffer's waits: a consumer reads `block` frames `per_cycle` times back to back
    every `cycle` seconds of fake time; sleeping advances the clock and runs the reads now due."""

    def __init__(self, ring: RingBuffer, block: int, per_cycle: int = 1, cycle: float = 256 / RATE) -> None:
        self.ring, self.now, self.naps, self.read_times = ring, 0.0, [], []
        self.out, self.per_cycle, self.cycle = np.zeros((block, ring.channels), np.float32), per_cycle, cycle
        self.next_read = 0.0003  # the consumer's phase, which the producer cannot see

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.next_read <= end:
            self.now = self.next_read
            for _ in range(self.per_cycle):
                self.ring.read_into(self.out)
                self.now += 1e-6  # back to back
            self.read_times.append(self.next_read)
            self.next_read += self.cycle
        self.now = end


def test_a_wait_sleeps_through_the_reads_it_needs_then_polls_for_the_last(monkeypatch) -> None:
    """A consumer reading 256-frame blocks every 8 ms: a producer waiting for 600 frames to go sleeps
    through the two reads that surely come first, then polls every POLL_S for the third, and returns
    within POLL_S of it. Sleeping the deficit's whole time overslept that read by up to a block."""
    from musicsteer.engine import ring_buffer

    ring = RingBuffer(channels=1, capacity=4096, sample_rate=RATE)
    ring.write(np.zeros((1, 2000), np.float32))
    clock = Clocked(ring, 256)
    monkeypatch.setattr(ring_buffer, "time", clock)
    clock.advance(0.001)  # the first read: the consumer's burst is known (1744 queued)
    assert ring.burst == 256
    assert ring.wait_until_at_most(1744 - 600)  # 600 frames to go: three reads
    assert ring.available == 1744 - 3 * 256
    assert clock.naps[0] == pytest.approx(2 * 256 / RATE)  # the two reads that surely come first
    assert all(nap == ring_buffer.POLL_S for nap in clock.naps[1:])
    assert clock.now - clock.read_times[-1] <= ring_buffer.POLL_S  # back soon after the read that made room


def test_reads_back_to_back_are_one_burst_and_big_bursts_are_not_polled_at_2khz(monkeypatch) -> None:
    """JACK with a period above --blocksize asks for several blocks per cycle: the wait counts the
    burst, not the block (or it would sleep past the cycle's reads); a big block is polled at a 32nd
    of its time, not every 0.5 ms; and a catch-up after a stall (blocks read back to back) is
    forgotten two bursts later instead of coarsening every later wait."""
    from musicsteer.engine import ring_buffer

    ring = RingBuffer(channels=1, capacity=8192, sample_rate=RATE)
    ring.write(np.zeros((1, 4000), np.float32))
    clock = Clocked(ring, 16, per_cycle=16)  # 16 blocks of 16 frames every 8 ms
    monkeypatch.setattr(ring_buffer, "time", clock)
    clock.advance(0.001)
    assert ring.burst == 256
    assert ring.wait_until_at_most(ring.available - 600)
    assert clock.now - clock.read_times[-1] <= ring_buffer.POLL_S

    ring = RingBuffer(channels=1, capacity=65536, sample_rate=RATE)
    ring.write(np.zeros((1, 40000), np.float32))
    clock = Clocked(ring, 16384, cycle=16384 / RATE)
    monkeypatch.setattr(ring_buffer, "time", clock)
    clock.advance(0.001)
    assert ring.wait_until_at_most(ring.available - 100)
    assert len(clock.naps) <= ring_buffer.POLLS_PER_BLOCK + 1  # one burst's time polled: 32 naps, not 1,000

    ring = RingBuffer(channels=1, capacity=8192, sample_rate=RATE)
    ring.write(np.zeros((1, 6000), np.float32))
    clock = Clocked(ring, 256)
    monkeypatch.setattr(ring_buffer, "time", clock)
    clock.advance(0.001)
    for _ in range(12):  # a stalled consumer catching up: twelve blocks at once
        ring.read_into(clock.out)
    assert ring.burst == 13 * 256
    clock.advance(2 * 256 / RATE)  # two ordinary cycles later
    assert ring.burst == 256


def test_a_writer_with_more_than_the_ring_holds_writes_while_a_burst_still_plays(monkeypatch) -> None:
    """A fixed buffer smaller than a decoder chunk: the writer waits for the ring less one burst to be
    free, never for an empty ring (which let every chunk play the ring dry first)."""
    from musicsteer.engine import ring_buffer
    from musicsteer.engine.ring_buffer import RingWriter

    ring = RingBuffer(channels=1, capacity=896, sample_rate=RATE)
    writer, clock = RingWriter(ring, RATE), Clocked(ring, 256)
    monkeypatch.setattr(ring_buffer, "time", clock)
    chunk = np.zeros((1, 3200), np.float32)  # a 5-frame decoder chunk, 100 ms, in a 28 ms ring
    for _ in range(3):
        rest = chunk[:, writer.write(chunk) :]
        while rest.shape[1]:
            assert writer.wait_for_space(rest.shape[1], timeout=1.0)
            rest = rest[:, writer.write(rest) :]
    assert ring.underrun_events == 0 and ring.available > 0


def test_a_failed_ring_releases_every_wait_at_once() -> None:
    ring = RingBuffer(channels=1, capacity=1000, sample_rate=RATE)
    ring.write(np.zeros((1, 1000), np.float32))
    waiting = threading.Thread(target=lambda: results.append(ring.wait_for_space(500)))  # no timeout
    results: list[bool] = []
    waiting.start()
    time.sleep(0.05)
    ring.fail("output device 'x' went away")
    waiting.join(timeout=1.0)
    assert results == [False] and ring.failure == "output device 'x' went away"
    began = time.monotonic()
    assert ring.wait_until_empty() is False and ring.wait_for_space(10) is False
    sink = NullSink(ring, RATE, 1)
    assert sink.drain() is False  # never started, nothing will ever read: returns instead of hanging
    assert time.monotonic() - began < 0.1


class _BrokenRing(RingBuffer):
    """A ring whose reads fail after the first second: no real fault makes our copy raise, so this
    stands in for a bug in the consumer's path."""

    def read_into(self, out: np.ndarray) -> int:
        if self.frames_read >= RATE:
            raise RuntimeError("consumer bug")
        return super().read_into(out)


def test_a_raising_consumer_fails_the_sink_and_releases_the_producer() -> None:
    ring = _BrokenRing(2, RATE // 2, RATE)
    sink = NullSink(ring, RATE, 2, blocksize=BLOCK)
    ring.write(sine(0.5))
    sink.start()
    try:
        taken = 0
        while sink.wait_for_space(640):  # no timeout: only the failure can end this loop
            taken += sink.write(sine(0.02))
        drained = sink.drain()
    finally:
        sink.stop()
    assert sink.error == "null output's reader raised RuntimeError: consumer bug" == ring.failure
    assert not drained and sink.callback_errors >= 1 and sink.counters["callback_errors"] == sink.callback_errors
    assert RATE <= ring.frames_read < RATE + BLOCK  # it played until the first failing read


# ---- device resolution --------------------------------------------------------------------------
def test_unknown_device_is_one_clear_line() -> None:
    with pytest.raises(MusicsteerError) as err:
        resolve_output_device("no-such-speaker")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown output device 'no-such-speaker'; available: ") and "null" in message
    with pytest.raises(MusicsteerError, match="unknown output device '4242'"):
        resolve_output_device(4242)
    assert resolve_output_device("NULL") == "null"
    assert list_output_devices()[-1]["name"] == "null"


# ---- playback -----------------------------------------------------------------------------------
def play(sink, audio: np.ndarray, chunk: int = 640) -> None:
    """Produce like the generation thread: write in chunks, pacing on the ring's space."""
    for i in range(0, audio.shape[1], chunk):
        block = audio[:, i : i + chunk]
        assert sink.wait_for_space(block.shape[1], timeout=5.0)
        assert sink.write(block) == block.shape[1]


def check_books(sink, ring: RingBuffer) -> None:
    """Every frame the device asked for was audio, a counted underrun, or start/end silence."""
    assert sink.callback_errors == 0
    assert sink.callbacks * BLOCK == ring.frames_read + ring.underrun_frames + ring.idle_frames


@pytest.fixture(scope="module")
def jack32k():
    with jack_server(RATE) as name:
        yield name


def test_portaudio_sink_plays_three_seconds_through_jack(jack32k: str) -> None:
    ring = RingBuffer(2, RATE // 2, RATE)
    sink = open_sink("system", ring, RATE, 2, blocksize=BLOCK, resample=False)
    assert isinstance(sink, PortAudioSink) and not sink.resampling
    audio = sine(3.0)
    ring.write(audio[:, : RATE // 4])  # prime a quarter second, as a session does before start()
    start = time.monotonic()
    sink.start()
    try:
        play(sink, audio[:, RATE // 4 :])
        assert sink.drain(timeout=5.0)
        elapsed = time.monotonic() - start
    finally:
        sink.stop()
    expected = 3 * RATE / BLOCK  # 93.75
    print(f"jack 32k: {sink.callbacks} callbacks in {elapsed:.3f} s (expected ~{expected:.1f}), "
          f"underruns {sink.underrun_events}/{sink.underrun_frames} frames, xruns {sink.output_underflows}")
    assert ring.frames_read == audio.shape[1]
    assert expected - 1 <= sink.callbacks <= expected + 8
    assert 2.7 <= elapsed <= 3.5
    assert sink.underrun_events == 0
    check_books(sink, ring)


def test_portaudio_sink_counts_underruns_when_producer_stops_early(jack32k: str) -> None:
    ring = RingBuffer(2, RATE // 2, RATE)
    sink = open_sink("sys", ring, RATE, 2, blocksize=BLOCK)  # a substring of the name is enough
    ring.write(sine(0.5))
    sink.start()
    try:
        play(sink, sine(0.5))  # one second in all, then the producer "stalls" without drain()
        ring.wait_until_empty(timeout=5.0)
        time.sleep(0.6)
    finally:
        sink.stop()
    starved_s = sink.underrun_frames / RATE
    print(f"early stop: {sink.underrun_events} dropout(s), {starved_s:.3f} s of silence inserted")
    assert sink.underrun_events == 1
    assert 0.45 <= starved_s <= 1.0
    assert RATE <= ring.frames_read < RATE + BLOCK  # it played until the first failing read
    check_books(sink, ring)


def test_device_refusing_the_model_rate() -> None:
    with jack_server(48000):
        ring = RingBuffer(2, RATE // 2, RATE)
        with pytest.raises(MusicsteerError) as err:
            open_sink("system", ring, RATE, 2, resample=False)
        assert str(err.value) == "output device 'system' refuses 32000 Hz (supports 48000 Hz)"
        assert ring.sample_rate == RATE
        sink = open_sink("system", ring, RATE, 2, blocksize=BLOCK, resample=True)
        assert sink.resampling and sink.device_rate == 48000 and ring.sample_rate == 48000
        audio = sine(1.0)
        assert sink.write(audio[:, : RATE // 4]) == RATE // 4  # primed, as a session does before start()
        sink.start()
        try:
            play(sink, audio[:, RATE // 4 :])
            assert sink.drain(timeout=5.0)
        finally:
            sink.stop()
        print(f"jack 48k via soxr: {sink.callbacks} callbacks, {ring.frames_read} device frames for 1 s")
        assert ring.frames_read == 48000  # every model frame arrived, resampled 3:2, tail included
        assert sink.underrun_events == 0
        check_books(sink, ring)


def test_null_sink_runs_in_real_time() -> None:
    ring = RingBuffer(2, 4096, RATE)
    sink = open_sink("null", ring, RATE, 2, blocksize=BLOCK)
    assert isinstance(sink, NullSink)
    audio = sine(3.0)
    ring.write(audio[:, :4096])  # primed, or the first tick would race the producer's first write
    start = time.monotonic()
    sink.start()
    try:
        play(sink, audio[:, 4096:])
        assert sink.drain(timeout=5.0)
        elapsed = time.monotonic() - start
    finally:
        sink.stop()
    # The last of 94 blocks is due 93 periods after start: 2.976 s.
    ideal = (np.ceil(audio.shape[1] / BLOCK) - 1) * BLOCK / RATE
    print(f"null sink: 3 s of audio took {elapsed:.3f} s (ideal {ideal:.3f} s, error {elapsed / ideal - 1:+.2%}), "
          f"{sink.callbacks} blocks")
    assert abs(elapsed / 3.0 - 1) <= 0.10
    assert ring.frames_read == audio.shape[1] and sink.underrun_events == 0
    check_books(sink, ring)


# ---- the device failing mid-session -------------------------------------------------------------
# Each case runs in its own process: once a JACK server dies under an open stream, PortAudio can
# never be terminated in that process (Pa_Terminate aborts on an assert), so neither this test
# process nor jack_server()'s own exit may touch it afterwards. The child therefore leaves with
# os._exit, after running the exit handlers itself: sounddevice's must have been taken off by the sink.
_LOSE_DEVICE = textwrap.dedent(
    """
    import atexit, json, os, signal, sys, threading, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from jack import jack_server
    from musicsteer.engine.audio_out import open_sink
    from musicsteer.engine.ring_buffer import RingBuffer

    def jackd_pid(name):
        for entry in os.listdir("/proc"):
            try:
                argv = open(f"/proc/{{entry}}/cmdline", "rb").read().split(b"\\0")
            except OSError:
                continue
            if argv[0].endswith(b"jackd") and name.encode() in argv:
                return int(entry)

    server = jack_server({rate})
    name = server.__enter__()  # never exited: see the comment above the test
    pid = jackd_pid(name)
    log = os.readlink(f"/proc/{{pid}}/fd/1")  # jack_server's log, which its skipped exit would remove
    ring = RingBuffer(2, {rate} // 2, {rate})
    sink = open_sink("system", ring, {rate}, 2, blocksize=1024)
    block = (0.1 * np.sin(np.arange(640) / 10.0)).astype(np.float32)[np.newaxis].repeat(2, axis=0)
    ring.write(np.zeros((2, {rate} // 4), np.float32))  # primed before start(), as a session does
    sink.start()
    out = {{}}

    def produce():  # the generation thread: no timeouts, so only the sink's failure can release it
        while sink.wait_for_space(640):
            sink.write(block)
        out["drained"] = sink.drain()
        out["producer_s"] = time.monotonic() - killed

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(1.0)
    out["callbacks_before"] = sink.callbacks
    killed = time.monotonic()
    os.kill(pid, signal.{signal})
    while sink.error is None and time.monotonic() - killed < 10:
        time.sleep(0.01)
    out["detected_s"] = time.monotonic() - killed
    producer.join(10)
    began = time.monotonic()
    sink.stop()
    out["stop_s"] = time.monotonic() - began
    out.update(error=sink.error, ring_failure=ring.failure, counters=sink.counters, callbacks=sink.callbacks)
    if {signal!r} == "SIGSTOP":
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)  # jackd unregisters itself on SIGTERM (SIGKILL would leak its slot)
    os.waitpid(pid, 0)
    os.unlink(log)
    print(json.dumps(out), flush=True)
    atexit._run_exitfuncs()  # what a normal exit runs: Pa_Terminate here would abort the process
    sys.stdout.flush()
    os._exit(0)
    """
)


@pytest.mark.parametrize(("signal", "reason"), [
    ("SIGTERM", "output device 'system' stopped playing: the device or its server went away"),
    ("SIGSTOP", "output device 'system' stopped asking for audio (no callback for 1."),
])
def test_a_device_lost_mid_playback_is_reported_and_releases_the_producer(signal: str, reason: str) -> None:
    code = _LOSE_DEVICE.format(tests=str(Path(__file__).parent), rate=RATE, signal=signal)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"jackd {signal}: error after {out['detected_s']:.2f} s, producer released after "
          f"{out['producer_s']:.2f} s, stop() took {out['stop_s']:.3f} s; {out['error']}; {out['counters']}")
    assert out["callbacks_before"] >= 20  # it really played before the fault
    assert out["error"].startswith(reason) and out["ring_failure"] == out["error"]
    assert out["detected_s"] <= 2.0
    assert out["drained"] is False and out["producer_s"] <= 2.5  # wait_for_space and drain returned
    assert out["stop_s"] < 1.0  # abandoned, not stopped: Pa_StopStream would block for 10 minutes
    assert set(out["counters"]) == {"output_underflows", "callback_errors", "underrun_events", "underrun_frames",
                                    "idle_frames", "rebuffer_events"}
    assert out["counters"]["callback_errors"] == 0


@pytest.mark.parametrize("period", [256, 1024])
def test_an_auto_block_is_the_jack_servers_own_period(period: int) -> None:
    """--blocksize auto (play's and bench's one default) plays the JACK server's period: the callbacks
    come one a period and the sink's `blocksize` (the lead's margin, the ring's room) says so."""
    from musicsteer.commands.bench import MODE_OPTIONS
    from musicsteer.engine.params import PARAMS
    from musicsteer.engine.session import StreamOptions

    assert PARAMS["blocksize"].default == StreamOptions().blocksize == MODE_OPTIONS["blocksize"][1] == "auto"
    with jack_server(RATE, period=period):
        ring = RingBuffer(2, RATE // 2, RATE)
        sink = open_sink("system", ring, RATE, 2, resample=False)
        sizes: list[int] = []
        read_into = ring.read_into
        ring.read_into = lambda out: (sizes.append(len(out)), read_into(out))[1]
        sink.start()
        time.sleep(0.5)
        sink.stop()
    assert sink.blocksize == period and set(sizes) == {period}, (sink.blocksize, set(sizes))
    assert NullSink(RingBuffer(2, RATE, RATE), RATE, 2).blocksize == 256  # the null clock's auto block
