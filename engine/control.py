"""The live control state: changes queued by any thread, applied by the generation thread at token boundaries.

Controllers (OSC, MIDI, web, automation, a replayed log) call `submit`: the change is checked there
and then against the parameter table, the model and the vectors file, so a bad value is refused to
its sender and never reaches the queue; a live value out of range is clamped and marked. Every
refusal and clamp is counted by kind (`counts`), for the status and the summary. A valid change
waits in a bounded inbox (or, with `at_step`, in a schedule) until the generation thread calls
`apply_due` before the next token; what that returns (`Boundary`) is what the generator acts on:
new steering terms, a new prompt, a new seed. Glides (an alpha ramp, a vector-mix morph) advance
one step at a time from the step they start on, so a replayed session log reproduces them exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import Busy, MusicsteerError, OutOfRange, UnknownName, shown
from .events import Change, validate_change
from .params import LIVE, PARAMS, glide_steps
from .steering import Term, check_alpha
from .vectors import SteeringVectors

_TYPES = {"number": float, "whole": int, "text": str, "choice": str, "mix": dict}


def _controls_field(row: Any) -> tuple[str, type, Any]:
    kind = tuple if row.many else _TYPES[row.kind]
    empty = dict if row.kind == "mix" else tuple if row.many else None
    default = field(default_factory=empty) if empty else (row.default if row.default is not None else "")
    return row.status, kind, default


# Every value a performer can change while the music plays: one field per live row of the table,
# named by its status key (layers: a tuple; mix {} and layers () and site "" mean the vectors file's).
Controls = dataclasses.make_dataclass("Controls", [_controls_field(row) for row in LIVE.values()])
Controls.__doc__ = "The live controls, one field per row of params.LIVE (named by its status key)."
FIELD = {row.name: row.status for row in LIVE.values()}  # Change.param -> Controls field


def controls_of(values: dict[str, Any]) -> Any:
    """`Controls` from values by row name (a parsed command line's, a config's): a value missing or None
    is the field's default (mix {}, layers (), site "": the vectors file's). Values are already checked."""
    given = {row.status: values.get(row.name) for row in LIVE.values()}
    return Controls(**{name: value for name, value in given.items() if value is not None})

MIX_MEMORY = 64  # mix directions remembered (a morph makes a new mix every token)
INBOX = 4096  # changes waiting for the next token; past this a flood is refused (Busy), not queued


@dataclass
class _Glide:
    start_step: int
    steps: int
    start: Any
    end: Any

    def at(self, step: int) -> tuple[Any, bool]:
        """Value at `step`, and whether the glide is finished."""
        t = min(1.0, (step - self.start_step + 1) / self.steps)
        if isinstance(self.end, dict):
            names = dict.fromkeys([*self.start, *self.end])
            value = {n: (1 - t) * self.start.get(n, 0.0) + t * self.end.get(n, 0.0) for n in names}
        else:
            value = (1 - t) * self.start + t * self.end
        return (self.end if t >= 1 else value), t >= 1


@dataclass
class Boundary:
    """What one token boundary applied, for the generator to act on."""

    changes: list[Change]
    steering: bool = False  # the terms changed (a change or a glide step): rebuild the steering tensors
    prompt: str | None = None  # a new text prompt to encode
    seed: int | None = None  # reseed the sampler


class ControlState:
    def __init__(self, controls: Any, vectors: SteeringVectors | None, num_layers: int,
                 steps_per_second: float, slew: float = PARAMS["slew"].default, steer_rule: str = "renorm") -> None:
        self.vectors = vectors
        self.steer_rule = steer_rule  # renorm divides by 1 + alpha: it needs alpha > -1
        # A knob jump in alpha glides over this time instead of landing in one token (no clicks).
        self.slew = slew
        self.num_layers = num_layers
        self.steps_per_second = steps_per_second
        self.values = dataclasses.replace(controls, mix=dict(controls.mix))
        if vectors is not None:
            self.values.layers = self.values.layers or (vectors.best_layer,)
            self.values.site = self.values.site or vectors.site
        self.values.site = self.values.site or "residual"
        # The starting values obey the rules of any start-up path: out of range is an error, not a clamp.
        for row in LIVE.values():
            value = getattr(self.values, row.status)
            if not value and row.default is None:  # empty (mix, layers): the vectors file's choice
                continue
            setattr(self.values, row.status, self.check(Change(row.name, value), live=False).value)
        self._inbox: queue.Queue[Change] = queue.Queue(INBOX)
        self._scheduled: list[tuple[int, int, Change]] = []
        self._order = itertools.count()
        self._glides: dict[str, _Glide] = {}
        self._mixed: dict[tuple, Tensor] = {}  # remembered mix directions (see _direction)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        # prepare(change, then, source): work a change needs before it can apply (a prompt's text encoding, on
        # another thread); `then` (None for a scheduled change) queues it once done. It returns the value of
        # a change from `source` (or the oldest of another's) that the new one superseded unapplied, or None
        # (engine/prompts.py). Set by the generator.
        self.prepare: Callable[[Change, Callable[[], None] | None, Hashable], Any] | None = None

    # -- any thread ---------------------------------------------------------------------------
    def check(self, change: Change, live: bool = True) -> Change:
        """Validate a change against the parameter table, the model and the vectors file. The model's
        layer count narrows the table's layer range (live: clamped into it; at start-up: refused)."""
        asked = change.value
        change = validate_change(change, live)
        if change.param == "alpha":  # the rule's bound, judged on the value as sent
            check_alpha(asked if isinstance(asked, int | float) and not isinstance(asked, bool) else change.value,
                        self.steer_rule)
        if change.param == "layer":
            last = self.num_layers - 1
            if any(layer > last for layer in change.value):
                if not live:
                    raise OutOfRange(f"layer {max(change.value)} out of range: this model has layers 0-{last}")
                layers = tuple(dict.fromkeys(min(layer, last) for layer in change.value))
                change = Change("layer", layers, change.seconds, clamped=True)
        if change.param == "mix":
            if self.vectors is None:
                raise MusicsteerError("steering needs a vectors file (--vectors FILE)")
            unknown = [n for n in change.value if n not in self.vectors.directions]
            if unknown:
                raise UnknownName(f"unknown vector {shown(unknown[0], 40)}; the vectors file has: "
                                  f"{', '.join(self.vectors.labels)}")
        return change

    def submit(self, change: Change, at_step: int | None = None, source: Hashable = None) -> Change:
        """Queue a change for the next token boundary, or for `at_step` (start-up paths: automation, a
        replayed log; checked strictly). Thread-safe. Returns the checked change (`clamped` set when
        a live value was brought into range); raises a typed MusicsteerError, nothing queued, if refused.
        Both outcomes are counted. `source` names the sender (an OSC sender's host, a page's host): a live
        prompt replaces the one its source has waiting to be encoded, counted `superseded`."""
        try:
            change = self.check(change, live=at_step is None)
            if at_step is None:  # when it arrived, for knob → heard (engine/latency.py)
                change = dataclasses.replace(change, arrived=time.monotonic())
            encoding = change.param == "prompt" and self.prepare is not None
            then = self._when_ready(change) if at_step is None else None  # a live one joins the inbox when encoded
            if encoding and self.prepare(change, then, source) is not None:  # (encoded on the prompt thread)
                self.report("superseded")  # a waiting prompt gave way to this one, never applied
            if at_step is not None:
                with self._lock:
                    heapq.heappush(self._scheduled, (at_step, next(self._order), change))
            elif not encoding:
                self._inbox.put_nowait(change)
        except queue.Full:
            self.report(Busy.kind)
            raise Busy(f"{INBOX} changes are already waiting for the next token; {change.param} refused") from None
        except MusicsteerError as err:
            self.report(err.kind)
            err.counted = True
            raise
        if change.clamped:
            self.report("clamped")
        return change

    def _when_ready(self, change: Change) -> Callable[[], None]:
        def enqueue() -> None:
            try:
                self._inbox.put_nowait(change)
            except queue.Full:  # the sender was answered already: count what is lost
                self.report(Busy.kind)
        return enqueue

    def refused(self, err: MusicsteerError) -> None:
        """Count a refusal a controller met, unless it was counted where it was raised (submit)."""
        if not err.counted:
            self.report(err.kind)
            err.counted = True

    def report(self, kind: str) -> None:
        """Count one refusal (by kind), or a clamp ("clamped"), found by a controller or by submit."""
        with self._lock:
            self._counts[kind] += 1

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot: refusals by kind, and "clamped"."""
        with self._lock:
            return dict(self._counts)

    # -- the generation thread ----------------------------------------------------------------
    def apply_due(self, step: int) -> Boundary:
        """Apply every change due at `step`, advance glides, and say what the generator must redo."""
        boundary = Boundary([])
        if self._scheduled:  # (unlocked peek: a push racing it is seen at the next token)
            with self._lock:
                while self._scheduled and self._scheduled[0][0] <= step:
                    boundary.changes.append(heapq.heappop(self._scheduled)[2])
        for _ in range(INBOX):  # what is waiting now; a flood arriving meanwhile waits for the next token
            try:
                boundary.changes.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for change in boundary.changes:
            self._apply(step, change, boundary)
        for param, glide in list(self._glides.items()):
            value, done = glide.at(step)
            setattr(self.values, FIELD[param], value)
            boundary.steering = True
            if done:
                del self._glides[param]
        return boundary

    def _apply(self, step: int, change: Change, boundary: Boundary) -> None:
        param, value = change.param, change.value
        row = LIVE[param]
        if row.glide is not None:  # alpha (a ramp; a jump glides over the slew) and mix (a morph)
            self._glides.pop(param, None)
            seconds = change.seconds or (self.slew if param == "alpha" else 0.0)
            if seconds > 0:
                steps = glide_steps(seconds, self.steps_per_second)
                self._glides[param] = _Glide(step, steps, getattr(self.values, row.status), value)
                return
        setattr(self.values, row.status, value)
        # What the row acts on (params.EFFECTS); "sampler": the sampler reads the values every step.
        if row.effect == "steering":
            boundary.steering = True
        elif row.effect == "prompt":
            boundary.prompt = value
        elif row.effect == "seed":
            boundary.seed = value

    def snapshot(self) -> tuple[dict[str, Any], dict[str, tuple[int, int, Any, Any]]]:
        """The generation thread: the values now (a copy) and the glides under way, {param: (start_step,
        steps, start, end)}: what a window slide's checkpoint holds (engine/checkpoint.py)."""
        values = {f.name: (dict(v) if isinstance(v := getattr(self.values, f.name), dict) else v)
                  for f in dataclasses.fields(self.values)}
        glides = {p: (g.start_step, g.steps, g.start, g.end) for p, g in self._glides.items()}
        return values, glides

    def restore(self, values: dict[str, Any], glides: dict[str, tuple[int, int, Any, Any]]) -> None:
        """Before the first token: take a snapshot's values and glides (a take resumed from a checkpoint)."""
        self.values = dataclasses.replace(self.values, **values)
        self._glides = {p: _Glide(*g) for p, g in glides.items()}

    def terms(self) -> list[Term]:
        """The steering terms the current values describe (none without vectors, mix or alpha)."""
        v = self.values
        if self.vectors is None or not v.mix or v.alpha == 0:
            return []
        return [Term(v.site, layer, self._direction(v.mix, layer), float(v.alpha)) for layer in v.layers]

    def _direction(self, mix: dict[str, float], layer: int) -> Tensor:
        """The unit direction of a mix at a layer, remembered: an alpha knob or glide asks for the
        same one every token, and mixing costs more than the rest of a steering update."""
        key = (tuple(mix.items()), layer)
        direction = self._mixed.get(key)
        if direction is None:
            try:
                direction = self.vectors.mix(mix, layer)
            except MusicsteerError:
                # A morph passing through a mix that cancels out: no steering for that instant.
                direction = torch.zeros(self.vectors.d_model)
            if len(self._mixed) >= MIX_MEMORY:
                self._mixed.clear()  # a morph makes a new mix every token: never hold more than this
            self._mixed[key] = direction
        return direction
