"""Playing the ring buffer: a PortAudio stream, or a clock-paced "null" device when there is no sound card.

The producer (generation thread) calls `sink.write(block)`; the sink's consumer (PortAudio's callback
or the null sink's clock thread) copies one block per call out of the `RingBuffer`. When the device
refuses the model's rate, resampling happens here on the producer side, before the ring: the callback
only ever copies.

Loading PortAudio, the device list and `--output-device` resolution are engine/audio_devices.py's.

A device can vanish mid-session (a JACK server killed, a USB interface unplugged). A watchdog thread
notices within `_WATCH_PERIOD` + `stall_s`: the stream went inactive on its own, or its callback
stopped coming. Alone, the sink then sets `error` and fails its ring, so the producer's waits return at
once; given `on_lost` (a session's output, engine/audio_reconnect.py), it calls that instead, once, and
from then on its callback (should the stream ever call again) plays silence without touching the ring,
so another consumer may read it.
Measured here (PortAudio 19.6.0, JACK 1.9.21, the dummy backend): after the server dies the stream
turns inactive at once; Pa_AbortStream (and Pa_StopStream) then blocks for 600 s, after which
Pa_CloseStream aborts the process on an assert (pa_jack.c CleanUpStream), as Pa_Terminate does at
once (pa_jack.c Terminate). So a lost stream is abandoned, never stopped or closed, and this process
never terminates PortAudio again (sounddevice's exit handler included).

The device block (`--blocksize auto`, the default of play and bench alike) is chosen as `--buffer auto`
chooses its lead: the least that plays whole. A JACK server fixes its period for every client, and
PortAudio's JACK host API calls back once a period when asked for no block size (0): auto opens the
stream so and takes the period from the stream's latency (measured, dummy backend: 256- and
1024-frame periods give 8 and 32 ms at 32 kHz, one period each). Other host APIs report no period:
auto takes the block of PortAudio's low output latency for the device (its estimate of the least
that plays whole), as a power of two from 64 frames. The null sink, a clock thread, plays 256-frame
blocks (8 ms at 32 kHz) whole here. `blocksize` is then the number chosen: the lead's margin and
the ring's room are counted in it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .audio_devices import (
    NULL_DEVICE,
    abandon_stream,
    load_sounddevice,
    resolve_output_device,
    stream_closed,
    stream_opened,
)
from .errors import MusicsteerError, one_line
from .latency import DacClock
from .ring_buffer import RingBuffer, RingWriter

_COMMON_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 192000)
_WATCH_PERIOD = 0.1  # seconds between the watchdog's looks at a playing stream
NULL_AUTO_BLOCK = 256  # the null sink's block under --blocksize auto: its clock thread plays it whole here
AUTO_LEAST_BLOCK = 64  # auto's least block where the host reports no period (a callback's own cost bounds it)


class AudioSink(Protocol):
    """What the session needs from an output: a producer side, start/stop, and honest counters."""

    sample_rate: int  # rate of the audio given to write() (the model's)
    device_rate: int  # rate the device consumes (differs only when resampling)
    ring: RingBuffer
    latency: float  # seconds the device adds after the ring
    callbacks: int  # blocks the device asked for
    callback_errors: int  # calls whose copy raised (the block was played as silence)
    output_underflows: int  # device-reported xruns (PortAudio flag; null sink: clock stalls)
    error: str | None  # one line, set once the output failed (device gone, callback raising, stalled)

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def write(self, block: np.ndarray) -> int: ...
    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool: ...
    def finish(self, timeout: float | None = None) -> bool: ...
    def drain(self, timeout: float | None = None) -> bool: ...
    @property
    def underrun_events(self) -> int: ...
    @property
    def underrun_frames(self) -> int: ...
    @property
    def counters(self) -> dict[str, int]: ...


class _SinkBase:
    """Producer side and counters shared by both sinks; the producer talks to a `RingWriter`.

    Counters (plain ints, read from any thread): `callbacks`, `callback_errors`, `output_underflows`,
    `underrun_events`/`underrun_frames` (the ring's dropouts: silence inserted while audio was due);
    `counters` adds the ring's `idle_frames` (expected silence: before the first write, after the end)
    and `rebuffer_events`. `error` is None until the output fails.
    """

    def __init__(self, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int,
                 clock: DacClock | None = None) -> None:
        if ring.channels != channels:
            raise ValueError(f"ring has {ring.channels} channels, sink needs {channels}")
        if blocksize < 1:
            raise ValueError(f"blocksize must be >= 1, got {blocksize!r}")
        self.ring, self.channels, self.blocksize = ring, channels, blocksize
        # The sink decides the rate of what the ring holds: the model's, unless it must resample.
        self.sample_rate = self.device_rate = ring.sample_rate = int(sample_rate)
        self.callbacks = self.callback_errors = self.output_underflows = 0
        self.error: str | None = None
        self._writer = RingWriter(ring, sample_rate)
        # When each ring frame reached the DAC (knob → heard); a consumer standing in for a lost device
        # stamps the session's own clock.
        self.clock = DacClock(ring.sample_rate) if clock is None else clock

    def _resample_to(self, device_rate: int) -> None:
        self.ring.set_rate(device_rate)  # the ring now holds device-rate frames: as many seconds as asked
        self.device_rate = self.clock.rate = self.ring.sample_rate
        self._writer = RingWriter(self.ring, self.sample_rate)

    @property
    def resampling(self) -> bool:
        return self._writer.resampling

    @property
    def underrun_events(self) -> int:
        return self.ring.underrun_events

    @property
    def underrun_frames(self) -> int:
        return self.ring.underrun_frames

    @property
    def counters(self) -> dict[str, int]:
        """Every dropout and failure count, for status lines and the summary."""
        return {"output_underflows": self.output_underflows, "callback_errors": self.callback_errors,
                "underrun_events": self.underrun_events, "underrun_frames": self.underrun_frames,
                "idle_frames": self.ring.idle_frames, "rebuffer_events": self.ring.rebuffer_events}

    def _fail(self, message: str) -> None:
        """The output failed: keep the first reason, and release the producer's waits for good."""
        if self.error is None:
            self.error = one_line(message)
        self.ring.fail(self.error)

    def write(self, block: np.ndarray) -> int:
        """Queue model-rate PCM (channels, n); never blocks; returns input frames taken (see RingWriter)."""
        return self._writer.write(block)

    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool:
        """Sleep until `frames` fit (True), or `timeout` passes or the output failed (False, at once)."""
        return self._writer.wait_for_space(frames, timeout)

    def finish(self, timeout: float | None = None) -> bool:
        """Push the last audio (the resampler's tail too) and mark the end, without waiting for playback.
        False if `timeout` passed or the output failed (then at once); call again to go on."""
        return self._writer.finish(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """`finish`, then wait until it has been consumed; the silence after is not an underrun.
        False if `timeout` passed or the output failed (then at once)."""
        return self._writer.drain(timeout)


class PortAudioSink(_SinkBase):
    """A sounddevice OutputStream whose callback only copies from the ring, watched while it plays.

    `stall_s`: seconds without a callback after which a started stream counts as failed. `on_lost(reason)`:
    called once (on the watchdog's thread) when the device goes away, instead of failing the ring.
    `host_api` and `host_block` (0: the host's own period, as asked of JACK) say how to open it again.
    """

    def __init__(self, device: int, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int | str = "auto",
                 latency: float | str | None = None, resample: bool = True, stall_s: float = 1.0) -> None:
        auto = blocksize == "auto"
        super().__init__(ring, sample_rate, channels, 1 if auto else int(blocksize))
        self.stall_s = float(stall_s)
        self.on_lost: Callable[[str], None] | None = None
        self._callback_exc: BaseException | None = None  # the first one; formatted by the watchdog
        self._lost = False  # the device is gone: the stream must be abandoned, not stopped
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        sd = load_sounddevice()
        info = sd.query_devices(device)
        self.device_name = str(info["name"])
        if info["max_output_channels"] < channels:
            raise MusicsteerError(f"output device {self.device_name!r} has {info['max_output_channels']} "
                                  f"output channels; {channels} needed")
        rate = int(sample_rate)
        if not _rate_ok(sd, device, rate, channels):
            rates = [r for r in _COMMON_RATES if _rate_ok(sd, device, r, channels)]
            shown = ", ".join(str(r) for r in rates) + " Hz" if rates else "none of the common rates"
            if not resample or not rates:
                raise MusicsteerError(f"output device {self.device_name!r} refuses {sample_rate} Hz (supports {shown})")
            default = int(info["default_samplerate"])  # the device's own rate, else the nearest above ours
            rate = default if default in rates else min(rates, key=lambda r: (r < sample_rate, r))
        self.host_api = str(sd.query_hostapis(info["hostapi"])["name"])
        jack = auto and self.host_api.startswith("JACK")
        if auto and not jack:  # no period reported: the block of the device's low latency, a power of two
            low = max(AUTO_LEAST_BLOCK, round(float(info["default_low_output_latency"]) * rate))
            self.blocksize = min(1 << (low - 1).bit_length(), 16384)
        if auto and latency is None:
            latency = "low"
        try:
            self._stream = sd.OutputStream(samplerate=rate, blocksize=0 if jack else self.blocksize, device=device,
                                           channels=channels, dtype="float32", latency=latency,
                                           callback=self._callback)
        except (sd.PortAudioError, ValueError) as exc:
            raise MusicsteerError(f"cannot open output device {self.device_name!r}: {one_line(exc)}") from None
        self.host_block = 0 if jack else self.blocksize
        if jack:  # called back once a JACK period: the stream's latency is that period
            self.blocksize = max(16, round(float(self._stream.latency) * rate))
        if rate != self.sample_rate:
            self._resample_to(rate)  # only now: a failed open must leave the caller's ring as it was
        stream_opened()
        self._closed = False
        self.latency = float(self._stream.latency)

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Realtime thread: copy or zero-fill, count, and never let an exception escape (sounddevice
        # would swallow it and the session would only hear silence with nothing reported).
        try:
            self.callbacks += 1
            if status.output_underflow:
                self.output_underflows += 1
            if self._lost:  # another consumer may own the ring now
                outdata.fill(0.0)
                return
            # The stream clock's own delay to the DAC, put on the monotonic clock arrivals are read on.
            delay = time_info.outputBufferDacTime - time_info.currentTime
            self.clock.mark(self.ring.frames_read, time.monotonic() + (delay if 0.0 < delay < 2.0 else self.latency))
            self.ring.read_into(outdata)
        except BaseException as exc:
            self.callback_errors += 1
            if self._callback_exc is None:
                self._callback_exc = exc
            try:  # noqa: SIM105 - contextlib.suppress would allocate on the realtime thread
                outdata.fill(0.0)
            except BaseException:
                pass

    def _watch(self) -> None:
        seen, since = self.callbacks, time.monotonic()
        woke = since
        while not self._stopping.wait(_WATCH_PERIOD) and not self._lost:
            now = time.monotonic()
            # A late wake-up means this whole process was held up (suspended, starved of CPU or the
            # GIL): then a late callback says nothing about the device, so its silence restarts.
            if self.callbacks != seen or now - woke > 4 * _WATCH_PERIOD:
                seen, since = self.callbacks, now
            woke = now
            self._check(now - since)

    def _check(self, silent_s: float) -> None:
        """Look at the stream once: set `error` (and `_lost`) if it failed."""
        exc = self._callback_exc
        if exc is not None and self.error is None:
            self._fail(f"audio callback for {self.device_name!r} raised {type(exc).__name__}: {one_line(exc)}")
        if self._lost:
            return
        if not self._stream.active:  # only PortAudio ends a started stream: our callback never asks to
            self._lose(f"output device {self.device_name!r} stopped playing: the device or its server went away")
        elif silent_s > self.stall_s:
            self._lose(f"output device {self.device_name!r} stopped asking for audio "
                       f"(no callback for {silent_s:.1f} s)")

    def _lose(self, reason: str) -> None:
        """The device went away: its stream is never touched again (abandoned at stop)."""
        self._lost = True  # before on_lost: the callback must leave the ring to the next consumer
        if self.on_lost is None:
            self._fail(reason)
        else:
            self.on_lost(one_line(reason))

    def start(self) -> None:
        """Start the stream and its watchdog. A device gone since it was opened (PortAudio: "Server is not
        running") raises MusicsteerError, one line, and the stream counts as lost."""
        sd = load_sounddevice()
        try:
            self._stream.start()
        except sd.PortAudioError as exc:
            self._lost = True
            raise MusicsteerError(f"output device {self.device_name!r} cannot start: {one_line(exc)}") from None
        self._watchdog = threading.Thread(target=self._watch, name="musicsteer-audio-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        """Stop and close the stream (a sink plays once; open a new one to play again); never blocks on a
        lost device: its stream is abandoned (see the module docstring)."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._stopping.set()
            self._watchdog.join()
            self._check(0.0)  # a device lost since the watchdog's last look must not be stopped either
        if self._lost:
            abandon_stream(self._stream)
            return
        try:
            self._stream.stop()
        finally:
            self._stream.close()
            stream_closed()


def _rate_ok(sd: Any, device: int, rate: int, channels: int) -> bool:
    try:
        sd.check_output_settings(device=device, samplerate=rate, channels=channels, dtype="float32")
    except (sd.PortAudioError, ValueError):
        return False
    return True


class NullSink(_SinkBase):
    """No sound card: a thread consumes one block per period of a monotonic clock and discards it.

    Deadlines are absolute (start + k·period), so sleep jitter never accumulates and a
    `--output-device null` session runs at exactly real time. After a stall longer than
    `max_lag` the clock restarts (counted in output_underflows) instead of racing to catch up,
    as a real device would drop out rather than play faster. `clock`: stamp this DacClock (a session's
    own, while this sink stands in for a lost device on the same ring) instead of a new one.
    """

    def __init__(self, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int | str = "auto",
                 max_lag: float = 0.5, clock: DacClock | None = None) -> None:
        blocksize = NULL_AUTO_BLOCK if blocksize == "auto" else int(blocksize)
        super().__init__(ring, sample_rate, channels, blocksize, clock)
        self.max_lag = max_lag
        self.latency = blocksize / sample_rate
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("NullSink already started")
        self._thread = threading.Thread(target=self._run, name="musicsteer-null-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self.blocksize / self.device_rate
        block = np.zeros((self.blocksize, self.channels), dtype=np.float32)
        origin, k = time.monotonic(), 0
        while not self._stop.is_set():
            now = time.monotonic()
            due = origin + k * period
            if now < due:
                self._stop.wait(due - now)
                continue
            if now - due > self.max_lag:
                self.output_underflows += 1
                origin, k = now, 0
            try:
                self.callbacks += 1
                self.clock.mark(self.ring.frames_read, now)  # "played" on its tick
                self.ring.read_into(block)
            except Exception as exc:
                self.callback_errors += 1
                self._fail(f"null output's reader raised {type(exc).__name__}: {one_line(exc)}")
            k += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def open_sink(spec: str | int | None, ring: RingBuffer, sample_rate: int, channels: int,
              blocksize: int | str = "auto", resample: bool = True,
              latency: float | str | None = None) -> PortAudioSink | NullSink:
    """Resolve `spec` and open its sink (not started). Device errors surface here, before generation.
    blocksize: frames per callback, or "auto" (the module's docstring); the sink's `blocksize` is the one used."""
    device = resolve_output_device(spec)
    if device == NULL_DEVICE:
        return NullSink(ring, sample_rate, channels, blocksize)
    return PortAudioSink(device, ring, sample_rate, channels, blocksize, latency, resample)
