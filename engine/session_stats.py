"""A live session's figures at one moment (`StreamingSession.stats`): what status lines, OSC subscribers
and play's summary report; `status_of`, the same as plain data for the surfaces (`StreamingSession.status`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .events import plain
from .params import LIVE

if TYPE_CHECKING:
    from .session import StreamingSession


@dataclass
class SessionStats:
    step: int
    generated_seconds: float
    played_seconds: float
    elapsed_seconds: float
    rtf: float  # audio seconds made per second of work of the busier thread (> 1: faster than real time)
    buffer_seconds: float
    underrun_events: int
    underrun_seconds: float
    rebuffers: int
    callbacks: int
    recording: str | None
    # The two stages run in parallel, so the pipeline goes at the slower one's pace (rtf, above).
    generation_rtf: float = 0.0  # audio seconds of frames generated per second of token steps
    decode_rtf: float = 0.0  # audio seconds decoded per second of streaming EnCodec decode
    # Control values refused by kind, and "clamped": live values brought into range (ControlState.counts).
    control_counts: dict[str, int] = field(default_factory=dict)
    # The device's own reports: xruns (PortAudio output underflows), exceptions in the audio callback.
    xruns: int = 0
    callback_errors: int = 0
    idle_seconds: float = 0.0  # silence the device played while nothing was queued (start-up, a stop)
    recording_error: str | None = None  # the first failed take, and how much of it is safely on disk
    device_error: str | None = None  # the output failed for good (its consumer raised): the session ended early
    # The output device went away (engine/audio_reconnect.py): while it is away, one line (how long, the
    # tries); the session goes on on the clock. Losses and returns so far.
    device_lost: str | None = None
    device_losses: int = 0
    device_returns: int = 0
    # Knob → heard: arrival of each live change to its first sample at the DAC (engine/latency.py).
    heard: dict[str, float] = field(default_factory=dict)  # {"median_ms", "p95_ms", "changes"}; {} before one
    notices: int = 0  # errors and warnings told to the performer (Notice events)


def rate(audio_seconds: float, busy_seconds: float) -> float:
    """Audio seconds made per second of a thread's work (0 before any work)."""
    return audio_seconds / busy_seconds if busy_seconds > 0 else 0.0


def status_of(session: StreamingSession) -> dict:
    """A snapshot for status lines and OSC subscribers: the stream's figures, every live control under its
    status key (params.LIVE), refusals by kind and clamps (`counts`), the output device's state, the meter."""
    stats = session.stats()
    values = session.control.values
    controls = {row.status: plain(getattr(values, row.status)) for row in LIVE.values()}
    counts = session.control.counts
    clamped = counts.pop("clamped", 0)
    take = session.recordings.current
    meter = session.gen.meter
    return {
        "step": stats.step, "seconds": round(stats.played_seconds, 3), "rtf": round(stats.rtf, 3),
        "generation_rtf": round(stats.generation_rtf, 3), "decode_rtf": round(stats.decode_rtf, 3),
        "buffer": round(stats.buffer_seconds, 3), "underruns": stats.underrun_events,
        "rebuffers": stats.rebuffers, "xruns": stats.xruns, "callback_errors": stats.callback_errors,
        **controls, "recording": stats.recording or "", "recording_error": stats.recording_error or "",
        "recording_seconds": round(take.seconds, 2) if take is not None else 0.0,
        "device_error": stats.device_error or "", "device_lost": stats.device_lost or "",
        "device_losses": stats.device_losses, "device_returns": stats.device_returns,
        "heard_median_ms": stats.heard.get("median_ms", 0.0), "heard_p95_ms": stats.heard.get("p95_ms", 0.0),
        "lead": round(session.lead_seconds, 3),
        "notices": stats.notices,
        "refused": sum(counts.values()), "clamped": clamped, "refusals": counts,
        "meter": dict(meter.latest) if meter is not None else {},
    }
