"""The browser page's messages: what a page may ask (read strictly) and what it is first told (`hello`).

A page's JSON is untrusted: it is read with a bounded size (the server caps frames at 64 KiB) and depth,
every field is checked for type, and values go to the parameter table (engine/params.py) through
`ControlState.submit` like any other input. JSON has no tuples, so a list of layers becomes the
tuple the table takes; booleans are refused as numbers by the table itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from musicsteer.engine.errors import BadType, Malformed, UnknownName, shown
from musicsteer.engine.events import Change
from musicsteer.engine.params import GLIDE, LIVE, check_text

from .feedback import current_values
from .presets import check_name

if TYPE_CHECKING:
    from musicsteer.engine.session import StreamingSession

    from .presets import PresetBank

KINDS = ("set", "preset", "save", "record")
RECORD_ACTIONS = ("start", "stop")


@dataclass(frozen=True)
class PageMessage:
    kind: str  # set | preset | save | record
    change: Change | None = None  # set
    name: str | None = None  # preset, save, record start (None: a new take-….wav)
    seconds: float = 0.0  # save: the preset's glide
    action: str = ""  # record: start | stop


def parse_message(text: str) -> PageMessage:
    """One page message, checked for shape (values are checked by the table on submit). Raises
    Malformed (not JSON, not an object, nested too deep), BadType or UnknownName."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Malformed(f"not a JSON message ({len(text)} characters)") from None
    if not isinstance(data, dict):
        raise Malformed(f"a message is a JSON object with a 'type', got {type(data).__name__}")
    kind = data.get("type")
    if kind not in KINDS:
        raise UnknownName(f"unknown message type {shown(kind, 40)} (known: {', '.join(KINDS)})")
    if kind == "set":
        param = data.get("param")
        if not isinstance(param, str) or param not in LIVE:
            raise UnknownName(f"unknown parameter {shown(param, 40)} (known: {', '.join(LIVE)})")
        value = data.get("value")
        if isinstance(value, list):
            value = tuple(value)  # the table's type for several layers
        return PageMessage("set", Change(param, value, _seconds(data)))
    if kind == "record":
        action = data.get("action")
        if action not in RECORD_ACTIONS:
            raise BadType(f"record needs action start or stop, got {shown(action, 40)}")
        name = data.get("name")
        return PageMessage("record", name=None if name in (None, "") else check_text("a take's name", name, 255),
                           action=action)
    name = check_name(data.get("name"))
    return PageMessage(kind, name=name, seconds=_seconds(data))


def _seconds(data: dict) -> float:
    seconds = data.get("seconds", 0.0)
    return 0.0 if seconds is None else GLIDE.check(seconds)[0]  # start-up strictness: a page sends a time it shows


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON


def json_safe(value: Any) -> Any:
    """Plain data JSON can carry: tuples as lists, non-finite floats as None, keys as text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table() -> list[dict[str, Any]]:
    """The live rows of the parameter table as the page builds its controls from them."""
    rows = []
    for row in LIVE.values():
        finite = [x if math.isfinite(x) else None for x in (row.low, row.high)]
        rows.append({"name": row.name, "kind": row.kind, "help": row.help, "unit": row.unit, "low": finite[0],
                     "high": finite[1], "span": list(row.span) if row.span else None, "choices": list(row.choices),
                     "size": row.size, "many": row.many, "glide": list(row.glide) if row.glide else None,
                     "default": json_safe(row.default)})
    return rows


def hello(session: StreamingSession, presets: PresetBank | None) -> dict[str, Any]:
    """A new page's first message: everything it needs to draw itself and start in sync."""
    from musicsteer.engine.levels import BANDS

    vectors = session.gen.vectors
    return {"type": "hello", "table": table(), "vectors": list(vectors.labels) if vectors is not None else [],
            "layers": session.gen.lm.num_layers, "presets": presets.names() if presets is not None else None,
            "values": json_safe(current_values(session.control.values)),
            "status": json_safe(session.status()), "bands": [round(c) for c in session.levels.centres],
            "band_count": BANDS}


__all__ = ["PageMessage", "hello", "json_safe", "parse_message", "table"]
