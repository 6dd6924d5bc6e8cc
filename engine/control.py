"""The live control state, applied by the generation thread at token boundaries.

Any thread may `submit` a `Change` (OSC, MIDI, automation, the API). It is validated there and
then, so a bad value is refused to its sender and never reaches the queue; a valid one waits in a
thread-safe inbox (or, with `at_step`, in a schedule) until the generation thread calls `apply_due`
before computing the next token. Glides (an alpha ramp, a vector-mix morph) advance one step at a
time from the step they start on, so a replayed session log reproduces them exactly.
"""

from __future__ import annotations

import heapq
import itertools
import queue
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .errors import MusicsteerError
from .events import NUMERIC_PARAMS, Change, validate_change
from .steering import Term, check_alpha
from .vectors import SteeringVectors


@dataclass
class Controls:
    """Every value a performer can change while the music plays."""

    prompt: str = ""
    guidance: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    seed: int = 0
    alpha: float = 0.0
    mix: dict[str, float] = field(default_factory=dict)
    layers: tuple[int, ...] = ()  # empty: the vectors file's best layer
    site: str = ""  # empty: the vectors file's site


@dataclass
class _Glide:
    start_step: int
    steps: int
    start: object
    end: object

    def at(self, step: int) -> tuple[object, bool]:
        """Value at `step`, and whether the glide is finished."""
        t = min(1.0, (step - self.start_step + 1) / self.steps)
        if isinstance(self.end, dict):
            names = dict.fromkeys([*self.start, *self.end])
            value = {n: (1 - t) * self.start.get(n, 0.0) + t * self.end.get(n, 0.0) for n in names}
        else:
            value = (1 - t) * self.start + t * self.end
        return (self.end if t >= 1 else value), t >= 1


# Mix directions remembered by ControlState; a morph's every token is a new mix, so it is bounded.
MIX_MEMORY = 64


class ControlState:
    def __init__(self, controls: Controls, vectors: SteeringVectors | None, num_layers: int,
                 steps_per_second: float, alpha_slew_seconds: float = 0.0, steer_rule: str = "renorm") -> None:
        self.vectors = vectors
        self.steer_rule = steer_rule  # renorm divides by 1 + alpha: it needs alpha > -1
        # A knob jump in alpha glides over this time instead of landing in one token (no clicks).
        self.alpha_slew_seconds = alpha_slew_seconds
        self.num_layers = num_layers
        self.steps_per_second = steps_per_second
        self.values = replace(controls, mix=dict(controls.mix))
        if vectors is not None:
            self.values.layers = self.values.layers or (vectors.best_layer,)
            self.values.site = self.values.site or vectors.site
        self.values.site = self.values.site or "residual"
        # The starting values obey the same rules as live changes (a CLI flag is a change at step 0).
        for change in self._initial_changes():
            checked = self.check(change)
            if checked.param in NUMERIC_PARAMS and checked.param != "layer":
                setattr(self.values, checked.param, checked.value)
        self._inbox: queue.SimpleQueue[Change] = queue.SimpleQueue()
        self._scheduled: list[tuple[int, int, Change]] = []
        self._order = itertools.count()
        self._glides: dict[str, _Glide] = {}
        self._mixed: dict[tuple, Tensor] = {}  # remembered mix directions (see _direction)
        self.steering_dirty = True
        self.prompt_dirty = False
        self.seed_dirty = False

    def _initial_changes(self) -> list[Change]:
        v = self.values
        changes = [Change(param, getattr(v, param)) for param in NUMERIC_PARAMS if param != "layer"]
        changes += [Change("layer", layer) for layer in v.layers]
        return [*changes, Change("mix", v.mix)] if v.mix else changes

    def check(self, change: Change) -> Change:
        """Validate a change against the parameter rules, the model and the vectors file."""
        change = validate_change(change)
        if change.param == "alpha":
            check_alpha(change.value, self.steer_rule)
        if change.param == "layer" and change.value >= self.num_layers:
            raise MusicsteerError(f"layer {change.value} out of range: this model has layers 0-{self.num_layers - 1}")
        if change.param == "mix":
            if self.vectors is None:
                raise MusicsteerError("steering needs a vectors file (--vectors FILE)")
            unknown = [n for n in change.value if n not in self.vectors.directions]
            if unknown:
                raise MusicsteerError(
                    f"unknown vector {unknown[0]!r}; the vectors file has: {', '.join(self.vectors.labels)}"
                )
        return change

    def submit(self, change: Change, at_step: int | None = None) -> Change:
        """Queue a change for the next token boundary (or for `at_step`). Thread-safe.
        Raises MusicsteerError (nothing queued) if the change is invalid; returns the checked change."""
        change = self.check(change)
        if at_step is None:
            self._inbox.put(change)
        else:
            heapq.heappush(self._scheduled, (at_step, next(self._order), change))
        return change

    def apply_due(self, step: int) -> list[Change]:
        """Apply every change due at `step` and advance glides. Generation thread only."""
        due: list[Change] = []
        while self._scheduled and self._scheduled[0][0] <= step:
            due.append(heapq.heappop(self._scheduled)[2])
        while True:
            try:
                due.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for change in due:
            self._apply(step, change)
        self._advance_glides(step)
        return due

    def _apply(self, step: int, change: Change) -> None:
        param, value = change.param, change.value
        if param in ("alpha", "mix"):
            self._glides.pop(param, None)
            seconds = change.seconds or (self.alpha_slew_seconds if param == "alpha" else 0.0)
            if seconds > 0:
                steps = max(1, round(seconds * self.steps_per_second))
                self._glides[param] = _Glide(step, steps, getattr(self.values, param), value)
                return
            setattr(self.values, param, value)
            self.steering_dirty = True
        elif param == "layer":
            self.values.layers = (value,)
            self.steering_dirty = True
        elif param == "site":
            self.values.site = value
            self.steering_dirty = True
        elif param == "prompt":
            self.values.prompt = value
            self.prompt_dirty = True
        elif param == "seed":
            self.values.seed = value
            self.seed_dirty = True
        else:  # guidance, temperature, top_k, top_p: read by the sampler every step
            setattr(self.values, param, value)

    def _advance_glides(self, step: int) -> None:
        for param, glide in list(self._glides.items()):
            value, done = glide.at(step)
            setattr(self.values, param, value)
            self.steering_dirty = True
            if done:
                del self._glides[param]

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
