"""Timed control changes read from a YAML automation file.

The file is a list (or a mapping whose `events:` key holds the list) of items such as
`{at: 8.0, alpha: 0.2, ramp: 2.0}`. Each item becomes one or more `Change`s, checked by
`events.validate_change` exactly like an OSC or MIDI change, and tagged with its time and line.

We parse with `yaml.compose` rather than `safe_load` because the node tree keeps line numbers:
every error names the file and the line, which matters when a performer edits a long file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change, parse_mix, validate_change

# Keys that map one-to-one onto a Change of the same name, applied at once.
_DIRECT = ("alpha", "guidance", "temperature", "top_k", "top_p", "seed", "layer", "site", "prompt")
# Three spellings of a mix change; only one may appear per item (they would fight otherwise).
_MIX_KEYS = ("steer", "mix", "morph")
_MODIFIERS = ("ramp", "seconds")
KNOWN_KEYS = ("at", *_DIRECT, *_MIX_KEYS, *_MODIFIERS)


@dataclass(frozen=True)
class TimedChange:
    """A validated change and when (seconds from the start of generation) it takes effect."""

    at: float
    change: Change
    line: int  # 1-based line in the file, for messages



def yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """One line for any YAML failure, with the line it happened on (automation files and configs)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{source} line {mark.line + 1}" if mark else source
        kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        return f"{where}: {kind}: {' '.join(str(exc.problem or exc.context or 'invalid YAML').split())}"
    return f"{source}: YAML error: {' '.join(str(exc).split())}"


def load_automation(path: str | Path) -> list[TimedChange]:
    """Read and parse an automation file; every failure is a one-line MusicsteerError."""
    path = Path(path)
    if not path.exists():
        raise MusicsteerError(f"automation file not found: {path}")
    if not path.is_file():
        raise MusicsteerError(f"automation path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MusicsteerError(f"automation file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise MusicsteerError(f"cannot read automation file {path}: {exc.strerror or exc}") from None
    return parse_automation(text, source=str(path))


def parse_automation(text: str, source: str = "<automation>") -> list[TimedChange]:
    """Parse automation YAML into changes sorted by time (stable: file order kept for equal times)."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # may already fail here, on non-printable characters
        root = loader.get_single_node()
        if root is None:
            raise MusicsteerError(f"{source}: automation file is empty (expected a list of events)")
        out: list[TimedChange] = []
        for item in _event_list(root, source):
            out.extend(_parse_item(item, source, loader))
    except yaml.YAMLError as exc:
        raise MusicsteerError(yaml_error(exc, source)) from None
    finally:
        if loader is not None:
            loader.dispose()
    # sorted() is stable, so changes at the same time keep file order (and key order in an item).
    return sorted(out, key=lambda tc: tc.at)


def step_for_time(at: float, frame_rate: float) -> int:
    """The decode step a time falls on: round(at * frame_rate).

    Step k generates frame k's first codebook (the delay pattern puts the other codebooks on later
    steps), so applying the change before step k means the token at time `at` is the first one the
    change affects. Rounding (rather than flooring) picks the frame nearest the requested time.
    """
    if not math.isfinite(at) or at < 0:
        raise ValueError(f"time must be a finite number >= 0, got {at!r}")
    if not math.isfinite(frame_rate) or frame_rate <= 0:
        raise ValueError(f"frame rate must be > 0, got {frame_rate!r}")
    return round(at * frame_rate)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _event_list(root: yaml.Node, source: str) -> list[yaml.Node]:
    if isinstance(root, yaml.MappingNode):
        keys = {k.value: (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}
        extra = [k for k, _ in root.value if not (isinstance(k, yaml.ScalarNode) and k.value == "events")]
        if extra:
            raise MusicsteerError(
                f"{source} line {_line(extra[0])}: unknown top-level key {extra[0].value!r} "
                "(the file is a list of events, or a mapping with the key 'events')"
            )
        if "events" not in keys:
            raise MusicsteerError(f"{source} line {_line(root)}: expected a list of events or 'events:'")
        root = keys["events"][1]
    if isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null":
        return []  # `events:` with nothing under it: no automation, which is harmless
    if not isinstance(root, yaml.SequenceNode):
        raise MusicsteerError(f"{source} line {_line(root)}: expected a list of events")
    return list(root.value)


def _parse_item(node: yaml.Node, source: str, loader: yaml.SafeLoader) -> list[TimedChange]:
    if not isinstance(node, yaml.MappingNode):
        raise MusicsteerError(
            f"{source} line {_line(node)}: each event must be a mapping like {{at: 4.0, alpha: 0.6}}"
        )
    item_line = _line(node)
    fields: dict[str, tuple[Any, int]] = {}  # key -> (value, line), in file order
    for key_node, value_node in node.value:
        key, line = key_node.value, _line(key_node)
        if not isinstance(key_node, yaml.ScalarNode) or key not in KNOWN_KEYS:
            raise MusicsteerError(
                f"{source} line {line}: unknown key {str(key)!r} (known: {', '.join(KNOWN_KEYS)})"
            )
        if key in fields:
            raise MusicsteerError(f"{source} line {line}: key {key!r} given twice in one event")
        fields[key] = (loader.construct_object(value_node, deep=True), line)

    def fail(key: str, message: str) -> MusicsteerError:
        return MusicsteerError(f"{source} line {fields[key][1] if key in fields else item_line}: {message}")

    if "at" not in fields:
        raise fail("at", "event has no 'at:' time (seconds from the start)")
    at = _number(fields["at"][0])
    if at is None or not math.isfinite(at) or at < 0:
        raise fail("at", f"'at' must be a number of seconds >= 0, got {fields['at'][0]!r}")
    if "ramp" in fields and "alpha" not in fields:
        raise fail("ramp", "'ramp' sets the glide time of alpha, but this event has no alpha")
    if "seconds" in fields and "morph" not in fields:
        raise fail("seconds", "'seconds' sets the glide time of morph, but this event has no morph")
    mix_keys = [k for k in _MIX_KEYS if k in fields]
    if len(mix_keys) > 1:
        raise fail(mix_keys[1], f"one event can hold only one of {', '.join(_MIX_KEYS)}, got {mix_keys}")
    if not any(k in fields for k in (*_DIRECT, *_MIX_KEYS)):
        raise fail("at", "event changes nothing (add a parameter such as alpha: or steer:)")

    out: list[TimedChange] = []
    for key, (value, line) in fields.items():
        if key in ("at", *_MODIFIERS):
            continue
        try:
            change = _change_for(key, value, fields)
            out.append(TimedChange(at, validate_change(change), line))
        except MusicsteerError as exc:
            raise MusicsteerError(f"{source} line {line}: {exc}") from None
    return out


def _change_for(key: str, value: Any, fields: dict[str, tuple[Any, int]]) -> Change:
    if key == "alpha":
        return Change("alpha", _coerce(value), _glide(fields, "ramp"))
    if key in _DIRECT:
        return Change(key, value if key in ("site", "prompt") else _coerce(value))
    # steer/mix/morph all become a "mix" change; a string is a name or "a=0.5,b=0.5".
    mix = parse_mix(value) if isinstance(value, str) else value
    return Change("mix", mix, _glide(fields, "seconds") if key == "morph" else 0.0)


def _glide(fields: dict[str, tuple[Any, int]], key: str) -> float:
    if key not in fields:
        return 0.0
    value = fields[key][0]
    number = _number(value)
    if number is None:
        raise MusicsteerError(f"{key!r} needs a number of seconds, got {value!r}")
    return number


def _number(value: Any) -> float | None:
    """A number, or a string float() reads (YAML 1.1 reads `1e3` as text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce(value: Any) -> Any:
    # Only text that reads as a number is converted; validate_change reports anything else,
    # and ints stay ints so whole-number checks (top_k, seed) see the value as written.
    if isinstance(value, str):
        number = _number(value)
        if number is not None:
            return int(number) if number.is_integer() and "." not in value else number
    return value
