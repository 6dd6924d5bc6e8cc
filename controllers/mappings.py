"""What a session config maps and recalls: MIDI knob and trigger mappings, and named presets.

Plain data shared by the config reader (controllers/config.py), which builds and checks them, and
the MIDI mapper (controllers/midi.py), which plays them; neither imports the other. What a knob may
move comes from the parameter table: every row marked `midi`, plus `crossfade` (between two
vectors) and `morph_seconds` (the mapper's own default morph time).
"""

from __future__ import annotations

from dataclasses import dataclass

from musicsteer.engine.events import Change
from musicsteer.engine.params import GLIDE, LIVE, PARAMS, Param

CURVES = ("linear", "exp", "log")  # "log" is the same curve as "exp" (the name a "log pot" goes by)
TAKEOVERS = ("pickup", "jump")
ACTIONS = ("steer", "morph", "preset")
# Knob targets: the table's MIDI-mappable rows, a two-vector crossfade and the mapper's morph time.
KNOB_PARAMS = (*(row.name for row in LIVE.values() if row.midi), "crossfade", "morph_seconds")
# Ranges a knob may span beyond the table's rows (min/max in a mapping must lie inside them).
EXTRA_RANGES = {"crossfade": (0.0, 1.0), "morph_seconds": (GLIDE.low, GLIDE.high)}
# Where a knob on those starts (min, max, curve), unless a mapping says otherwise.
EXTRA_DEFAULTS = {"crossfade": (0.0, 1.0, "linear"), "morph_seconds": (0.5, 16.0, "exp")}


def default_range(param: str) -> tuple[float, float, str] | None:
    """(min, max, curve) a knob on `param` spans when a mapping (a config's, `midi-learn`'s, `--midi`
    without a config) gives none: its row's span and curve in the parameter table; None for a row
    without a span (seed, layer: the range is the performer's to give)."""
    if param in EXTRA_DEFAULTS:
        return EXTRA_DEFAULTS[param]
    row = PARAMS[param]
    return None if row.span is None else (float(row.span[0]), float(row.span[1]), row.curve)


def knob_end(param: str, which: str) -> Param:
    """The row a knob's `which` end ("min" or "max") is checked by: inside its parameter's range, so a
    knob can never send a value the table would refuse; fractional even for whole-number parameters."""
    low, high = EXTRA_RANGES.get(param) or (PARAMS[param].low, PARAMS[param].high)
    return Param(f"{which} of {param}", "number", f"the {which} end of a {param} knob", low=low, high=high)


@dataclass(frozen=True)
class KnobMapping:
    """A CC (0..127) moving a number from `low` (at 0) to `high` (at 127) along `curve`."""

    cc: int
    channel: int | None  # 1..16 as printed on hardware; None: any channel
    param: str  # a MIDI-mappable row, "crossfade" (between two vectors) or "morph_seconds" (the mapper's own)
    low: float
    high: float
    curve: str = "linear"
    takeover: str = "pickup"
    vectors: tuple[str, str] | None = None  # crossfade: (from, to)
    line: int = 0


@dataclass(frozen=True)
class TriggerMapping:
    """A note-on, or a button CC pressed (value >= PRESS): select a vector, morph to one, or recall a preset."""

    action: str  # steer | morph | preset
    target: str | dict[str, float]  # a preset name, or a mix
    note: int | None = None
    cc: int | None = None
    channel: int | None = None
    seconds: float | None = None  # morph time; None: the mapper's current morph time
    line: int = 0


@dataclass(frozen=True)
class Preset:
    name: str
    mix: dict[str, float]
    alpha: float
    layer: tuple[int, ...] | None = None
    site: str | None = None
    seconds: float = 0.0  # glide time for mix (morph) and alpha (ramp)
    line: int = 0

    def changes(self) -> list[Change]:
        """The changes that recall this preset: mix and alpha (gliding together), then layer and site if set."""
        out = [Change("mix", self.mix, self.seconds), Change("alpha", self.alpha, self.seconds)]
        out += [Change("layer", self.layer)] if self.layer is not None else []
        return out + ([Change("site", self.site)] if self.site is not None else [])
