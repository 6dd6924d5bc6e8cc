"""Learning a MIDI mapping by moving the controls: the procedure behind `musicsteer midi-learn`.

Each parameter is armed in turn ("turn the knob for alpha…"); the first CC that moves (on its
channel) is bound to it. Then each vector name is armed and the first pad (note-on) or button
(CC pressed, value >= 64) is bound to selecting that vector. The result is a YAML `midi:` section
that `load_config` accepts, with starting ranges and curves a performer can edit.

`MidiLearn` holds the whole procedure and knows nothing of ports or clocks, so it is tested by
feeding it `mido.Message`s; the command wires it to a real input and applies the per-control timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mido

from musicsteer.engine.errors import BadType, MusicsteerError, shown

from . import yaml_file
from .mappings import CURVES, KNOB_PARAMS, default_range, knob_end
from .midi import PRESS


@dataclass(frozen=True)
class KnobTarget:
    param: str
    low: float
    high: float
    curve: str


def parse_knob_targets(text: str) -> list[KnobTarget]:
    """`alpha,guidance,layer=14:22,temperature=0.3:3:exp` -> targets (a range is needed where no default exists)."""
    targets = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, spec = part.partition("=")
        if name not in KNOB_PARAMS or name == "crossfade":
            learnable = ", ".join(p for p in KNOB_PARAMS if p != "crossfade")
            raise MusicsteerError(f"cannot learn {name!r} (learnable: {learnable})")
        # The starting range (edit the file to taste): the row's span and curve (mappings.default_range).
        low, high, curve = default_range(name) or (None, None, "linear")
        if spec:
            fields = spec.split(":")
            if len(fields) not in (2, 3):
                raise BadType(f"bad range in {shown(part, 40)}: use NAME=MIN:MAX or NAME=MIN:MAX:CURVE")
            low, high = knob_end(name, "min").parse(fields[0]), knob_end(name, "max").parse(fields[1])
            curve = fields[2] if len(fields) > 2 else curve
        if low is None or high is None:
            raise MusicsteerError(f"{name} has no default range: give one, e.g. {name}=14:22")
        if curve not in CURVES or (curve != "linear" and not (low > 0 and high > 0)) or low == high:
            raise MusicsteerError(f"bad range for {name}: {low:g}..{high:g} {curve} (curves: {', '.join(CURVES)}; "
                                  "exp needs both ends > 0)")
        if any(t.param == name for t in targets):
            raise BadType(f"{name} is listed twice in --params")
        targets.append(KnobTarget(name, low, high, curve))
    return targets


class MidiLearn:
    """Arms each knob target, then each vector name, binding the first fitting message to it."""

    def __init__(self, knobs: list[KnobTarget], vectors: list[str]) -> None:
        self.queue: list[KnobTarget | str] = [*knobs, *vectors]
        self.mappings: list[dict] = []
        self.skipped: list[str] = []
        self.last = ""  # a description of the latest binding, for the command's output
        self._knob_ccs: set[tuple[int, int]] = set()  # (cc, channel) bound to knobs
        self._buttons: set[tuple[str, int, int]] = set()  # ("cc"|"note", number, channel) bound to vectors

    @property
    def done(self) -> bool:
        return not self.queue

    @property
    def armed(self) -> str | None:
        """What the next binding is for: a parameter name, or "vector NAME"."""
        if not self.queue:
            return None
        target = self.queue[0]
        return target.param if isinstance(target, KnobTarget) else f"vector {target}"

    def prompt(self) -> str:
        target = self.queue[0]
        if isinstance(target, KnobTarget):
            return f"turn the knob (or fader) for {target.param}…"
        return f"press the pad or button that selects {target}…"

    def feed(self, msg: mido.Message) -> bool:
        """Offer one message to the armed target; True once every target is bound or skipped."""
        if not self.queue:
            return True
        target, channel = self.queue[0], getattr(msg, "channel", 0) + 1
        if isinstance(target, KnobTarget):
            # A knob still turning from the previous binding keeps sending: bound CCs are ignored.
            if msg.type != "control_change" or (msg.control, channel) in self._knob_ccs:
                return False
            self._knob_ccs.add((msg.control, channel))
            self.mappings.append({"cc": msg.control, "channel": channel, "param": target.param,
                                  "min": target.low, "max": target.high, "curve": target.curve})
            self.last = f"{target.param} <- CC {msg.control} on channel {channel}"
        else:
            if msg.type == "note_on" and msg.velocity > 0:
                key = ("note", msg.note, channel)
            elif msg.type == "control_change" and msg.value >= PRESS and (msg.control, channel) not in self._knob_ccs:
                key = ("cc", msg.control, channel)
            else:
                return False  # releases, knobs, clock
            if key in self._buttons:
                return False  # the pad just bound, pressed again
            self._buttons.add(key)
            self.mappings.append({key[0]: key[1], "channel": channel, "steer": target})
            kind = "note" if key[0] == "note" else "button CC"
            self.last = f"vector {target} <- {kind} {key[1]} on channel {channel}"
        self.queue.pop(0)
        return self.done

    def skip(self) -> bool:
        """Give up on the armed target (the command's timeout); True once nothing is left."""
        if self.queue:
            self.skipped.append(self.armed or "")
            self.queue.pop(0)
        return self.done

    def to_yaml(self, port: str | int | None = None) -> str:
        lines = ["# written by musicsteer midi-learn; edit min/max/curve to taste, add takeover: jump to",
                 "# follow a knob at once instead of picking up the current value (see examples/)", "midi:"]
        if port is not None:
            lines.append(f"  port: {json.dumps(port)}")
        lines.append("  mappings:")
        for mapping in self.mappings:
            flow = yaml_file.dump(mapping, flow=True).strip()  # quotes a name YAML would read as a number
            lines.append(f"    - {flow}")
        return "\n".join(lines) + "\n"
