"""What surfaces are told back: the value of each control now, or as a change set it (docs/design.md §4).

Every surface that follows the engine (OSC echo and feedback targets, the browser page, MIDI feedback,
OSCQuery's VALUE) reads values here, so they all show the same thing whichever input moved a knob:
the value a change was *set to* (a glide's target, not the points on its way), as plain data —
numbers, text, {vector: weight} for the mix and a list of layers.
"""

from __future__ import annotations

from typing import Any

from musicsteer.engine.events import Applied, plain
from musicsteer.engine.params import LIVE


def current_values(values: Any) -> dict[str, Any]:
    """{param: value} of every live row, read from a `Controls` (fields named by status keys). While a
    glide runs this is the point on its way; surfaces that just connected start from it."""
    return {row.name: plain(getattr(values, row.status)) for row in LIVE.values()}


def applied_values(event: Applied) -> dict[str, Any]:
    """{param: value} that the changes of one token boundary set, the last one per param winning."""
    return {change.param: plain(change.value) for change in event.changes}


__all__ = ["applied_values", "current_values", "plain"]
