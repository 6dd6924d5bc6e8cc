"""Playing the ring buffer: a PortAudio stream, or a clock-paced "null" device when there is no sound card.

The producer (generation thread) calls `sink.write(block)`; the sink's consumer (PortAudio's callback
or the null sink's clock thread) copies one block per call out of the `RingBuffer`. When the device
refuses the model's rate, resampling happens here on the producer side, before the ring: the callback
only ever copies.

PortAudio enumerates devices once, at initialisation; a JACK server started after `sounddevice` was
imported stays invisible until PortAudio is re-initialised, so listing and resolving devices
re-initialise it first (only while no stream of ours is open: terminating PortAudio closes streams).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal, Protocol

import numpy as np

from .errors import MusicsteerError, one_line
from .ring_buffer import RingBuffer, RingWriter

NULL_DEVICE = "null"
_COMMON_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 192000)
_open_streams = 0  # PortAudio streams this process holds open; re-initialising would kill them
_pa_lock = threading.Lock()
PORTAUDIO_INSTALL = ("install libportaudio2 (Debian/Ubuntu: apt-get install libportaudio2; "
                     "macOS: brew install portaudio)")


def _sd() -> Any:
    """Import sounddevice; a missing or broken PortAudio library becomes a one-line MusicsteerError.

    sounddevice loads PortAudio and initialises it while it is imported, so every failure of the
    library (not found: OSError; cannot start: its PortAudioError) surfaces here, on first use. Only
    real devices need it: `--output-device null` never calls this.
    """
    try:
        import sounddevice
    except OSError as exc:  # sounddevice: "PortAudio library not found", or the loader's own message
        reason = one_line(exc)
        detail = "" if reason == "PortAudio library not found" else f" ({reason})"
        raise MusicsteerError(f"no PortAudio library{detail}: {PORTAUDIO_INSTALL}, "
                              "or play without a sound card: --output-device null") from None
    except ImportError as exc:
        raise MusicsteerError(f"cannot import sounddevice ({one_line(exc)}): pip install sounddevice") from None
    except Exception as exc:  # noqa: BLE001 - sounddevice.PortAudioError from Pa_Initialize at import
        raise MusicsteerError(f"PortAudio cannot start: {type(exc).__name__}: {one_line(exc)}") from None
    return sounddevice


def _refresh_portaudio() -> Any:
    """Re-initialise PortAudio so devices that appeared since import (a JACK server) are seen."""
    sd = _sd()
    with _pa_lock:
        if _open_streams == 0:
            depth = max(sd._initialized, 1)
            while sd._initialized:
                sd._terminate()
            try:
                for _ in range(depth):
                    sd._initialize()
            except sd.PortAudioError as exc:
                raise MusicsteerError(f"PortAudio cannot start: {one_line(exc)}") from None
    return sd


def null_output_device() -> dict:
    """The virtual "null" device, as `list_output_devices` lists it; it needs no PortAudio."""
    return {"index": None, "name": NULL_DEVICE, "host_api": "none (discards audio, paced by the clock)",
            "max_output_channels": 2, "default_samplerate": None}


def list_output_devices() -> list[dict]:
    """Every PortAudio device that can play, then the virtual "null" device (always present).

    Without a usable PortAudio this raises MusicsteerError (what to install); callers that only list
    (`musicsteer devices`) catch it and still show `null_output_device()`.
    """
    sd = _refresh_portaudio()
    try:
        hostapis = sd.query_hostapis()
        devices = [
            {"index": int(info["index"]), "name": str(info["name"]),
             "host_api": str(hostapis[info["hostapi"]]["name"]),
             "max_output_channels": int(info["max_output_channels"]),
             "default_samplerate": float(info["default_samplerate"])}
            for info in sd.query_devices()
            if info["max_output_channels"] > 0
        ]
    except sd.PortAudioError as exc:
        raise MusicsteerError(f"PortAudio cannot list devices: {one_line(exc)}") from None
    devices.append(null_output_device())
    return devices


def _describe(devices: list[dict]) -> str:
    return "; ".join(d["name"] if d["index"] is None else f"{d['index']}: {d['name']}" for d in devices)


def resolve_output_device(spec: str | int | None) -> int | Literal["null"]:
    """Map --output-device (None = default, "null", an index, or a name or part of one) to a device."""
    if isinstance(spec, str) and spec.strip().lower() == NULL_DEVICE:
        return NULL_DEVICE
    devices = list_output_devices()
    real = [d for d in devices if d["index"] is not None]
    if spec is None:
        sd = _sd()
        try:
            return int(sd.query_devices(kind="output")["index"])
        except (sd.PortAudioError, ValueError):
            raise MusicsteerError(f"no default output device; available: {_describe(devices)}") from None
    text = str(spec).strip()
    if isinstance(spec, int) or text.lstrip("-").isdigit():
        index = int(text)
        if any(d["index"] == index for d in real):
            return index
        raise MusicsteerError(f"unknown output device {text!r}; available: {_describe(devices)}")
    exact = [d for d in real if d["name"].lower() == text.lower()]
    if exact:
        return int(exact[0]["index"])  # the same name under several host APIs: the first is PortAudio's pick
    partial = [d for d in real if text.lower() in d["name"].lower()]
    if len(partial) == 1:
        return int(partial[0]["index"])
    if partial:
        raise MusicsteerError(f"ambiguous output device {text!r}: matches {_describe(partial)}; give an index")
    raise MusicsteerError(f"unknown output device {text!r}; available: {_describe(devices)}")


class AudioSink(Protocol):
    """What the session needs from an output: a producer side, start/stop, and honest counters."""

    sample_rate: int  # rate of the audio given to write() (the model's)
    device_rate: int  # rate the device consumes (differs only when resampling)
    ring: RingBuffer
    latency: float  # seconds the device adds after the ring
    callbacks: int
    callback_errors: int
    output_underflows: int  # device-reported xruns (PortAudio flag; null sink: clock stalls)

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def write(self, block: np.ndarray) -> int: ...
    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool: ...
    def drain(self, timeout: float | None = None) -> bool: ...
    @property
    def underrun_events(self) -> int: ...
    @property
    def underrun_frames(self) -> int: ...


class _SinkBase:
    """Producer side and counters shared by both sinks; the producer talks to a `RingWriter`."""

    def __init__(self, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int) -> None:
        if ring.channels != channels:
            raise ValueError(f"ring has {ring.channels} channels, sink needs {channels}")
        if blocksize < 1:
            raise ValueError(f"blocksize must be >= 1, got {blocksize!r}")
        self.ring, self.channels, self.blocksize = ring, channels, blocksize
        # The sink decides the rate of what the ring holds: the model's, unless it must resample.
        self.sample_rate = self.device_rate = ring.sample_rate = int(sample_rate)
        self.callbacks = self.callback_errors = self.output_underflows = 0
        self._writer = RingWriter(ring, sample_rate)

    def _resample_to(self, device_rate: int) -> None:
        self.device_rate = self.ring.sample_rate = int(device_rate)  # the ring now holds device-rate frames
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

    def write(self, block: np.ndarray) -> int:
        """Queue model-rate PCM (channels, n); never blocks; returns input frames taken (see RingWriter)."""
        return self._writer.write(block)

    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool:
        return self._writer.wait_for_space(frames, timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Push the last audio, wait until it has been consumed; the silence after is not an underrun."""
        return self._writer.drain(timeout)


class PortAudioSink(_SinkBase):
    """A sounddevice OutputStream whose callback only copies from the ring."""

    def __init__(self, device: int, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int = 1024,
                 latency: float | str | None = None, resample: bool = True) -> None:
        global _open_streams
        super().__init__(ring, sample_rate, channels, blocksize)
        sd = _sd()
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
        try:
            self._stream = sd.OutputStream(samplerate=rate, blocksize=blocksize, device=device, channels=channels,
                                           dtype="float32", latency=latency, callback=self._callback)
        except (sd.PortAudioError, ValueError) as exc:
            raise MusicsteerError(f"cannot open output device {self.device_name!r}: {one_line(exc)}") from None
        if rate != self.sample_rate:
            self._resample_to(rate)  # only now: a failed open must leave the caller's ring as it was
        with _pa_lock:
            _open_streams += 1
        self._closed = False
        self.latency = float(self._stream.latency)

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Realtime thread: copy or zero-fill, count, and never let an exception escape (sounddevice
        # would swallow it and the session would only hear silence with nothing reported).
        try:
            self.callbacks += 1
            if status.output_underflow:
                self.output_underflows += 1
            self.ring.read_into(outdata)
        except BaseException:
            self.callback_errors += 1
            try:  # noqa: SIM105 - contextlib.suppress would allocate on the realtime thread
                outdata.fill(0.0)
            except BaseException:
                pass

    def start(self) -> None:
        self._stream.start()

    def stop(self) -> None:
        """Stop and close the stream (a sink plays once; open a new one to play again)."""
        global _open_streams
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.stop()
        finally:
            self._stream.close()
            with _pa_lock:
                _open_streams -= 1


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
    as a real device would drop out rather than play faster.
    """

    def __init__(self, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int = 1024,
                 max_lag: float = 0.5) -> None:
        super().__init__(ring, sample_rate, channels, blocksize)
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
                self.ring.read_into(block)
            except Exception:
                self.callback_errors += 1
            k += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def open_sink(spec: str | int | None, ring: RingBuffer, sample_rate: int, channels: int, blocksize: int = 1024,
              resample: bool = True, latency: float | str | None = None) -> PortAudioSink | NullSink:
    """Resolve `spec` and open its sink (not started). Device errors surface here, before generation."""
    device = resolve_output_device(spec)
    if device == NULL_DEVICE:
        return NullSink(ring, sample_rate, channels, blocksize)
    return PortAudioSink(device, ring, sample_rate, channels, blocksize, latency, resample)
