"""Timed control changes read from a YAML automation file.

The file is a list (or a mapping whose `events:` key holds the list) of items such as
`{at: 8.0, alpha: 0.2, ramp: 2.0}`. Its keys are the parameter table's (engine/params.py): `at`,
each live parameter's YAML keys (`steer` and `mix` both set the mix), and each glide's pair
(`alpha` + `ramp`, `morph` + `seconds`). Every value is checked by its row with the start-up rules
(out of range is an error naming the line, never a clamp), so an automation line is held to the
same rules as a CLI flag or an OSC message. `schedule` places the events on a render's token clock
and refuses any that fall past its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import MusicsteerError, OutOfRange
from musicsteer.engine.events import Change, validate_change
from musicsteer.engine.params import AT, GLIDE, LIVE, Param

from .yaml_file import YamlTree, read_text

# key -> the live row it sets; glide key -> the key whose glide time it is.
KEY_ROWS: dict[str, Param] = {key: row for row in LIVE.values() for key in (*row.keys, *(row.glide or ())[:1])}
GLIDE_KEYS: dict[str, str] = {row.glide[1]: row.glide[0] for row in LIVE.values() if row.glide}
KNOWN_KEYS = ("at", *KEY_ROWS, *GLIDE_KEYS)


@dataclass(frozen=True)
class TimedChange:
    """A validated change and when (seconds from the start of generation) it takes effect."""

    at: float
    change: Change
    line: int  # 1-based line in the file, for messages


def load_automation(path: str | Path) -> list[TimedChange]:
    """Read and parse an automation file; every failure is a one-line MusicsteerError."""
    return parse_automation(read_text(path, "automation file"), source=str(path))


def parse_automation(text: str, source: str = "<automation>") -> list[TimedChange]:
    """Parse automation YAML into changes sorted by time (stable: file order kept for equal times)."""
    tree = YamlTree(text, source)
    if tree.root is None:
        raise MusicsteerError(f"{source}: automation file is empty (expected a list of events)")
    out: list[TimedChange] = []
    for item in _event_list(tree, tree.root):
        out.extend(_parse_item(tree, item))
    # sorted() is stable, so changes at the same time keep file order (and key order in an item).
    return sorted(out, key=lambda tc: tc.at)


def step_for_time(at: float, frame_rate: float) -> int:
    """The decode step a time falls on: round(at * frame_rate) (at is bounded by params.AT).

    Step k generates frame k's first codebook (the delay pattern puts the other codebooks on later
    steps), so applying the change before step k means the token at time `at` is the first one the
    change affects. Rounding (rather than flooring) picks the frame nearest the requested time.
    """
    if not (AT.low <= at <= AT.high):
        raise ValueError(f"time must be from {AT.low:g} to {AT.high:g} s, got {at!r}")
    if not 0 < frame_rate < 1e6:
        raise ValueError(f"frame rate must be > 0, got {frame_rate!r}")
    return round(at * frame_rate)


def schedule(events: list[TimedChange], frame_rate: float, seconds: float, source: str) -> list[tuple[int, Change]]:
    """(step, change) for each event of a render of `seconds` new audio; an event at or past its end
    would never apply, so it is refused (one line naming the file's line) instead of silently dropped."""
    out = []
    for timed in events:
        if timed.at >= seconds:
            raise OutOfRange(f"{source} line {timed.line}: at {timed.at:g} s is past the end of the render "
                             f"({seconds:g} s): it would never apply")
        out.append((step_for_time(timed.at, frame_rate), timed.change))
    return out


def _event_list(tree: YamlTree, root: yaml.Node) -> list[yaml.Node]:
    if isinstance(root, yaml.MappingNode):
        keys = {k.value: (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}
        extra = [k for k, _ in root.value if not (isinstance(k, yaml.ScalarNode) and k.value == "events")]
        if extra:
            raise tree.fail(extra[0], f"unknown top-level key {_key(extra[0])} (the file is a list of events, "
                                      "or a mapping with the key 'events')")
        if "events" not in keys:
            raise tree.fail(root, "expected a list of events or 'events:'")
        root = keys["events"][1]
    if isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null":
        return []  # `events:` with nothing under it: no automation, which is harmless
    if not isinstance(root, yaml.SequenceNode):
        raise tree.fail(root, "expected a list of events")
    return list(root.value)


def _key(node: yaml.Node) -> str:
    return repr(node.value[:40]) if isinstance(node, yaml.ScalarNode) else f"of type {node.id}"


def _parse_item(tree: YamlTree, node: yaml.Node) -> list[TimedChange]:
    if not isinstance(node, yaml.MappingNode):
        raise tree.fail(node, "each event must be a mapping like {at: 4.0, alpha: 0.6}")
    fields: dict[str, tuple[Any, yaml.Node, yaml.Node]] = {}  # key -> (value, key node, value node), in file order
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key not in KNOWN_KEYS:
            raise tree.fail(key_node, f"unknown key {_key(key_node)} (known: {', '.join(KNOWN_KEYS)})")
        if key in fields:
            raise tree.fail(key_node, f"key {key!r} given twice in one event")
        fields[key] = (tree.value(value_node), key_node, value_node)

    def value(key: str, row: Param) -> Any:  # messages name the key as written (ramp, steer)
        return tree.checked(row.named(key), *fields[key])

    if "at" not in fields:
        raise tree.fail(node, "event has no 'at:' time (seconds from the start)")
    at = value("at", AT)
    for glide_key, key in GLIDE_KEYS.items():
        if glide_key in fields and key not in fields:
            raise tree.fail(fields[glide_key][1], f"'{glide_key}' sets the glide time of {key}, but this event "
                                                  f"has no {key}")
    by_row: dict[str, list[str]] = {}
    for key in fields:
        if key in KEY_ROWS:
            by_row.setdefault(KEY_ROWS[key].name, []).append(key)
    for keys in by_row.values():
        if len(keys) > 1:
            spellings = [k for k in KEY_ROWS if KEY_ROWS[k] is KEY_ROWS[keys[0]]]
            raise tree.fail(fields[keys[1]][1], f"one event can hold only one of {', '.join(spellings)}, got {keys}")
    if not by_row:
        raise tree.fail(node, "event changes nothing (add a parameter such as alpha: or steer:)")

    out: list[TimedChange] = []
    for key, (_, key_node, _) in fields.items():
        if key not in KEY_ROWS:
            continue
        row = KEY_ROWS[key]
        glide_key = next((g for g, k in GLIDE_KEYS.items() if k == key), None)
        seconds = value(glide_key, GLIDE) if glide_key in fields else 0.0
        checked = value(key, row)
        try:
            change = validate_change(Change(row.name, checked, seconds), live=False)
        except MusicsteerError as exc:
            raise tree.fail(key_node, str(exc), type(exc)) from None
        out.append(TimedChange(at, change, key_node.start_mark.line + 1))
    return out
