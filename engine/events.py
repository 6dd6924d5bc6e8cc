"""Control changes: the single event type every input (OSC, MIDI, automation, API) becomes.

A `Change` names a parameter, a value and an optional glide time. `validate_change` checks the type
and range of every parameter in one place, so an OSC packet, a MIDI CC and a line of an automation
file are held to the same rules. Out-of-range numbers are clamped (and the clamp reported), wrong
types and non-finite numbers are refused with `MusicsteerError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import MusicsteerError

T = TypeVar("T")

# Parameters that take a number: (kind, low, high). Values outside [low, high] are clamped.
NUMERIC_PARAMS: dict[str, tuple[type, float, float]] = {
    "alpha": (float, -10.0, 10.0),
    "guidance": (float, 0.0, 30.0),
    "temperature": (float, 0.0, 10.0),
    "top_k": (int, 0, 1_000_000),
    "top_p": (float, 0.0, 1.0),
    "seed": (int, 0, 2**63 - 1),
    "layer": (int, 0, 10_000),  # checked against the model's layer count when applied
}
SITES = ("residual", "attention")
# Parameters that may glide over `seconds` (a ramp for alpha, a morph for the vector mix).
GLIDING_PARAMS = ("alpha", "mix")
ALL_PARAMS = (*NUMERIC_PARAMS, "mix", "site", "prompt")


@dataclass(frozen=True)
class Change:
    """One parameter change, applied by the generation thread at a token boundary.

    param:   one of ALL_PARAMS ("steer NAME" is the mix {NAME: 1.0}).
    value:   float/int, a dict {vector name: weight} for "mix", a str for "site"/"prompt".
    seconds: glide time for "alpha" (ramp) and "mix" (morph); 0 means at once.
    clamped: set by validate_change when the value was brought into range.
    """

    param: str
    value: Any
    seconds: float = 0.0
    clamped: bool = field(default=False, compare=False)


def _finite_number(param: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MusicsteerError(f"{param} needs a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise MusicsteerError(f"{param} must be finite, got {value!r}")
    return float(value)


def validate_change(change: Change) -> Change:
    """Return a checked (and possibly clamped) copy of `change`, or raise MusicsteerError."""
    param, value = change.param, change.value
    seconds = _finite_number("seconds", change.seconds)
    if seconds < 0:
        raise MusicsteerError(f"glide time must be >= 0 seconds, got {seconds}")
    if seconds > 0 and param not in GLIDING_PARAMS:
        raise MusicsteerError(f"{param} cannot glide; only {', '.join(GLIDING_PARAMS)} can")
    if param in NUMERIC_PARAMS:
        kind, low, high = NUMERIC_PARAMS[param]
        number = _finite_number(param, value)
        if kind is int and number != int(number):
            raise MusicsteerError(f"{param} needs a whole number, got {value!r}")
        clamped = min(max(number, low), high)
        out = int(clamped) if kind is int else clamped
        return Change(param, out, seconds, clamped=clamped != number)
    if param == "mix":
        return Change(param, _validate_mix(value), seconds)
    if param == "site":
        if value not in SITES:
            raise MusicsteerError(f"site must be one of {', '.join(SITES)}, got {value!r}")
        return Change(param, value, seconds)
    if param == "prompt":
        if not isinstance(value, str):
            raise MusicsteerError(f"prompt needs text, got {type(value).__name__}")
        return Change(param, value, seconds)
    raise MusicsteerError(f"unknown parameter {param!r} (known: {', '.join(ALL_PARAMS)})")


def _validate_mix(value: Any) -> dict[str, float]:
    if isinstance(value, str):
        value = {value: 1.0}
    if not isinstance(value, dict) or not value:
        raise MusicsteerError("a mix needs at least one vector name with a weight")
    mix: dict[str, float] = {}
    for name, weight in value.items():
        if not isinstance(name, str) or not name:
            raise MusicsteerError(f"vector names are text, got {name!r}")
        mix[name] = _finite_number(f"weight of {name}", weight)
    if all(w == 0 for w in mix.values()):
        raise MusicsteerError("a mix needs at least one non-zero weight")
    return mix


def parse_list(text: str | None, convert: Callable[[str], T], error: str) -> tuple[T, ...]:
    """Comma-separated values (`17,19`), blanks skipped; None or '' -> (). `error` is the one-line
    message when a part does not convert."""
    if not text:
        return ()
    try:
        return tuple(convert(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MusicsteerError(error) from None


def parse_mix(text: str) -> dict[str, float]:
    """Parse the CLI form `NAME` or `NAME=W,NAME=W` into a validated mix."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise MusicsteerError(f"bad weight in mix {text!r}: {weight!r} is not a number") from None
    return _validate_mix(mix)
