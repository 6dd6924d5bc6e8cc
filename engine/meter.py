"""A live genre meter: the probe read off the activations the decoder computes anyway.

Every token the conditional residual stream entering the probe's layer (the last position, before
that token's own steering there) is
L2-normalised, as the probes' inputs were, and added to a running sum; every `every` tokens the
mean is projected onto each label's unit direction at that layer, giving one score per label
(a cosine in -1..1; higher = more of that genre). No extra forward pass: the eager step hands the
meter the tensor its forward already produced; the captured graph (engine/graph.py) copies that
tensor into a static buffer inside the graph, which the meter reads after each replay, so a meter
never costs the graph.

Self-monitoring in the SMITIN spirit (`ease_at`): once the steered target's score has held above
the threshold for `hold` readings, alpha glides to 0; when it falls back below, alpha glides back
to the performer's value. The easing goes through the same control queue as any knob, so it lands
in the session log and a replay reproduces it exactly.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import MusicsteerError
from .events import Change, MeterReading
from .vectors import SteeringVectors

if TYPE_CHECKING:
    from .control import ControlState


class GenreMeter:
    def __init__(self, vectors: SteeringVectors, layer: int | None = None, every: int = 25,
                 ease_at: float | None = None, hold: int = 2, ease_seconds: float = 1.0) -> None:
        self.layer = vectors.best_layer if layer is None else layer
        self.labels = vectors.labels
        self.every = max(1, every)
        self.directions = torch.stack([vectors.direction(label, self.layer) for label in self.labels])  # (C, d)
        self.ease_at, self.hold, self.ease_seconds = ease_at, hold, ease_seconds
        self.latest: dict[str, float] = {}
        self.readings = 0
        self._sum: Tensor | None = None
        self._count = 0
        self._above = 0
        self._eased_from: float | None = None  # the performer's alpha while eased off

    @property
    def tap(self) -> str:
        """The activation the meter reads, as decoder.forward's capture names it ("unsteered.{layer}")."""
        # Before this token's own intervention at the layer: reading after it would mostly measure the
        # vector just added. The stream still carries what the steered past made of the music.
        return f"unsteered.{self.layer}"

    def observe(self, step: int, hidden: Tensor, control: ControlState) -> MeterReading | None:
        """hidden: (2B, T, d) entering the layer; the conditional first row's last position is read
        (it may be a buffer the next step overwrites: nothing here keeps a view of it).
        Returns a reading every `every` tokens (the generator hands it to its listeners), else None."""
        h = hidden[0, -1].float()
        h = h / h.norm().clamp_min(1e-12)
        self._sum = h if self._sum is None else self._sum + h
        self._count += 1
        if self._count < self.every:
            return None
        mean = self._sum / self._count
        self._sum, self._count = None, 0
        scores = (self.directions.to(mean.device) @ mean).tolist()
        self.latest = dict(zip(self.labels, (round(s, 4) for s in scores), strict=True))
        self.readings += 1
        if self.ease_at is not None:
            self._ease(control)
        return MeterReading(step, self.latest)

    def _ease(self, control: ControlState) -> None:
        mix = control.values.mix
        if not mix:
            return
        target = max(mix, key=lambda name: mix[name])
        score = self.latest.get(target, 0.0)
        self._above = self._above + 1 if score >= self.ease_at else 0
        with contextlib.suppress(MusicsteerError):  # a full inbox (counted by submit): ease at the next reading
            if self._eased_from is None and self._above >= self.hold and control.values.alpha != 0:
                control.submit(Change("alpha", 0.0, self.ease_seconds))
                self._eased_from = float(control.values.alpha)
            elif self._eased_from is not None and score < self.ease_at:
                control.submit(Change("alpha", self._eased_from, self.ease_seconds))
                self._eased_from = None
