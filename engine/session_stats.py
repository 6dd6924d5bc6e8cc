"""A live session's figures at one moment (`StreamingSession.stats`): what status lines, OSC subscribers
and play's summary report."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    device_error: str | None = None  # the output device failed (gone, stalled): the session ended early
    # Knob → heard: arrival of each live change to its first sample at the DAC (engine/latency.py).
    heard: dict[str, float] = field(default_factory=dict)  # {"median_ms", "p95_ms", "changes"}; {} before one
    notices: int = 0  # errors and warnings told to the performer (Notice events)


def rate(audio_seconds: float, busy_seconds: float) -> float:
    """Audio seconds made per second of a thread's work (0 before any work)."""
    return audio_seconds / busy_seconds if busy_seconds > 0 else 0.0
