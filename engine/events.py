"""What travels between the outside world and the generation thread.

In: a `Change` — a live parameter of the table (engine/params.py), a value and an optional glide
time — is the one event every input (OSC, MIDI, web, automation, a replayed log, the API) becomes.
`validate_change` checks it against its row: live values out of range are clamped (and marked),
start-up values out of range are refused.

Out: the generation thread tells `Listeners` what happened at a token boundary — `Applied` changes
and `MeterReading`s — and every consumer (session log, OSC subscribers, tests, benchmarks) is a
listener of that one mechanism. A `Notice` (a recording failed, the disk is nearly full, a prompt was
truncated, the sound device stopped) travels the same way, from whichever thread found it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import BadType, UnknownName, shown
from .params import GLIDE, LIVE


@dataclass(frozen=True)
class Change:
    """One parameter change, applied by the generation thread at a token boundary.

    param:   a live row of the parameter table (params.LIVE): alpha, mix, layer, site, prompt, …
    value:   its engine type: float/int; {vector name: weight} for mix; a tuple of layers; text.
    seconds: glide time for the rows that glide (alpha: a ramp, mix: a morph); 0 means at once.
    clamped: set by validate_change when a live value was brought into range.
    arrived: time.monotonic() when a live change was submitted (0: a scheduled one), for knob → heard.
    """

    param: str
    value: Any
    seconds: float = 0.0
    clamped: bool = field(default=False, compare=False)
    arrived: float = field(default=0.0, compare=False)


def validate_change(change: Change, live: bool = True) -> Change:
    """A checked copy of `change` (live: clamped into range, `clamped` set), or a typed MusicsteerError."""
    row = LIVE.get(change.param) if isinstance(change.param, str) else None
    if row is None:
        raise UnknownName(f"unknown parameter {shown(change.param)} (known: {', '.join(LIVE)})")
    seconds, slow = GLIDE.named(row.glide[1] if row.glide else "glide").check(change.seconds, live)
    if seconds > 0 and row.glide is None:
        gliding = ", ".join(p.name for p in LIVE.values() if p.glide)
        raise BadType(f"{row.name} cannot glide; only {gliding} can")
    value, clamped = row.check(change.value, live)
    if row.many and not isinstance(value, tuple):
        value = (value,)  # one layer live is the tuple of one
    return Change(row.name, value, seconds, clamped=clamped or slow)


@dataclass(frozen=True)
class Applied:
    """Changes that took effect before token `step` was generated, in the order applied, in batch
    stream `row` (0: the only one of a live session)."""

    step: int
    changes: tuple[Change, ...]
    row: int = 0


@dataclass(frozen=True)
class MeterReading:
    """A genre-meter reading at token `step`: {label: cosine score}."""

    step: int
    scores: dict[str, float]


@dataclass(frozen=True)
class Notice:
    """Something the performer must be told, found at token `step` by any thread.

    level: "error" (something was lost or stopped: OSC /musicsteer/error, a non-zero exit) or
    "warning" (OSC /musicsteer/warning); text: one line."""

    step: int
    level: str
    text: str


Event = Applied | MeterReading | Notice


def plain(value: Any) -> Any:
    """A control value as plain data (JSON, OSC, status): tuples as lists, dicts copied."""
    return list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value


class Listeners:
    """Callbacks run for every event, on the generation thread (a `Notice`: on the thread that found it,
    so callbacks must be thread-safe). They must be quick (hand work to another thread) and may raise:
    a broken listener is counted in `errors`, never stops the music."""

    def __init__(self) -> None:
        self._callbacks: tuple[Callable[[Event], None], ...] = ()
        self._lock = threading.Lock()
        self.errors = 0

    def add(self, callback: Callable[[Event], None]) -> None:
        with self._lock:  # copy-on-write: emit() reads the tuple without a lock
            self._callbacks = (*self._callbacks, callback)

    def remove(self, callback: Callable[[Event], None]) -> None:
        with self._lock:
            self._callbacks = tuple(c for c in self._callbacks if c is not callback)

    def emit(self, event: Event) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the music
                self.errors += 1
