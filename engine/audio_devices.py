"""PortAudio itself: loading it, the list of output devices, and which streams of ours it holds.

`load_sounddevice` turns a missing or broken PortAudio into a one-line MusicsteerError; only real
devices need it: `--output-device null` never calls it.

PortAudio enumerates devices once, at initialisation; a JACK server started after `sounddevice` was
imported stays invisible until PortAudio is re-initialised, so listing and resolving devices
re-initialise it first (only while no stream of ours is open: terminating PortAudio closes streams).
The sinks (engine/audio_out.py) say when they open and close a stream (`stream_opened`,
`stream_closed`), and hand over a lost device's stream with `abandon_stream`: it stays counted as
open for good, so this process never terminates PortAudio again (see engine/audio_out.py for why), and
the device, once back, is played by a child process that owns a PortAudio of its own
(engine/audio_player.py: this process's libjack cannot make a new client after its server died).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, Literal

from .errors import MusicsteerError, one_line

NULL_DEVICE = "null"
_open_streams = 0  # PortAudio streams this process holds open; re-initialising would kill them
_pa_lock = threading.Lock()
_abandoned: list = []  # streams of vanished devices: kept alive, as PortAudio may still hold their callback
PORTAUDIO_INSTALL = ("install libportaudio2 (Debian/Ubuntu: apt-get install libportaudio2; "
                     "macOS: brew install portaudio)")


def load_sounddevice() -> Any:
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


def stream_opened() -> None:
    """A sink opened a PortAudio stream: PortAudio must not be re-initialised until it is closed."""
    global _open_streams
    with _pa_lock:
        _open_streams += 1


def stream_closed() -> None:
    """A sink closed the stream it counted with `stream_opened`."""
    global _open_streams
    with _pa_lock:
        _open_streams -= 1


def abandon_stream(stream: Any) -> None:
    """Leave a lost device's stream open for good; it stays counted in `_open_streams`, so PortAudio is
    never re-initialised here, and sounddevice's exit handler (Pa_Terminate) is taken off: the OS frees
    everything at exit, where Pa_Terminate would abort the process."""
    _abandoned.append(stream)
    handler = getattr(load_sounddevice(), "_exit_handler", None)
    if handler is not None:
        atexit.unregister(handler)


def _refresh_portaudio() -> Any:
    """Re-initialise PortAudio so devices that appeared since import (a JACK server) are seen."""
    sd = load_sounddevice()
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
        sd = load_sounddevice()
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
