"""Steering terms as preallocated tensors, applied inside the decoder's forward pass.

A term is (site, layer, direction, alpha). Sites:
  residual  - the residual stream entering decoder layer L (the output of layer L-1);
  attention - the output of layer L's self-attention, before it joins the residual stream.
Rules, applied per token to the rows being steered (the conditional half of the CFG batch by
default, both halves with steer_both; the other rows come out numerically unchanged):
  renorm (default, the paper authors' code): h <- (h + alpha * ||h|| * v) / (1 + alpha)
  add:                                       h <- h + alpha * v
with v a unit direction. alpha = 0 leaves h unchanged under both rules (h * 1 + 0).

All values live in one table allocated once and updated in place, so a change between two steps
never reallocates and a captured graph needs no recapture. A host mirror of the table (pinned on
CUDA) is edited in the rows a change touches, and only the span of those rows is copied, without
blocking: a knob moving every token (a glide, a performer's hand) costs a few microseconds and no
host sync, whatever the model's size. `active` mirrors on the host which (site, layer) slots hold
a term, so eager decoding skips the others; a captured graph sets `apply_all` and computes every
slot (an empty slot has alpha = 0, which is exact identity).

The renorm rule is computed as h * keep + ||h|| * push with keep = 1 / (1 + alpha) and
push = alpha / (1 + alpha) * v, both made once per change: algebraically the rule above, in fewer
operations per token (tests compare it with the rule written out in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import MusicsteerError

SITES = ("residual", "attention")
RULES = ("renorm", "add")


@dataclass(frozen=True)
class Term:
    site: str
    layer: int
    direction: Tensor  # (d_model,), unit length
    alpha: float


class SteeringTensors:
    def __init__(
        self,
        num_layers: int,
        d_model: int,
        batch: int,
        device: torch.device,
        rule: str = "renorm",
        steer_both: bool = False,
        apply_all: bool = False,
    ) -> None:
        if rule not in RULES:
            raise MusicsteerError(f"unknown steering rule {rule!r} (known: {', '.join(RULES)})")
        self.num_layers = num_layers
        self.rule = rule
        self.apply_all = apply_all
        # Computed in float32 whatever the model dtype: the norm of a bf16 vector loses digits.
        # One table, per (site, layer, CFG batch row) the columns [alpha, keep, direction (d),
        # push (d)]. Rows that are not steered (the unconditional half, by default) hold the
        # identity (keep 1, push 0), so the rule runs on the whole batch with no row selection.
        self.batch_rows = 2 * batch
        self.steered_rows = 2 * batch if steer_both else batch
        self.table = torch.zeros(len(SITES), num_layers, self.batch_rows, 2 + 2 * d_model, device=device)
        # Public views (the first conditional row, which is always steered).
        self.alpha = {site: self.table[i, :, 0, 0] for i, site in enumerate(SITES)}
        self.keep = {site: self.table[i, :, 0, 1] for i, site in enumerate(SITES)}
        self.direction = {site: self.table[i, :, 0, 2 : 2 + d_model] for i, site in enumerate(SITES)}
        # Per-slot views shaped for h (2B, T, d), made once (the table never moves): selecting them
        # every token would cost ops.
        self._slots = {(site, layer): (self.table[i, layer, :, 1][:, None, None],
                                       self.table[i, layer, :, 2 + d_model :][:, None, :])
                       for i, site in enumerate(SITES) for layer in range(num_layers)}
        self.active: dict[str, frozenset[int]] = {site: frozenset() for site in SITES}
        self._host = torch.zeros(self.table.shape, pin_memory=self.table.is_cuda)
        self._host[..., 1] = 1.0  # keep = 1: identity
        self.table.copy_(self._host)
        self._set: dict[tuple[str, int], Term] = {}  # the terms the table holds now
        self._copied: torch.cuda.Event | None = None  # the last copy out of the host mirror

    def set_terms(self, terms: list[Term]) -> None:
        """Replace every term. Slots not named get alpha 0. Invalid terms change nothing."""
        new: dict[tuple[str, int], Term] = {}
        for term in terms:
            if term.site not in SITES:
                raise MusicsteerError(f"unknown steering site {term.site!r} (known: {', '.join(SITES)})")
            if not 0 <= term.layer < self.num_layers:
                raise MusicsteerError(f"layer {term.layer} out of range: this model has layers 0-{self.num_layers - 1}")
            if (term.site, term.layer) in new:
                raise MusicsteerError(f"two terms at {term.site} layer {term.layer}; mix their vectors instead")
            new[term.site, term.layer] = term
        touched = sorted(SITES.index(site) * self.num_layers + layer for site, layer in self._set.keys() | new.keys())
        if touched:
            if self._copied is not None:
                self._copied.synchronize()  # the previous copy has read the mirror (long done by now)
            host = self._host.view(-1, *self._host.shape[2:])  # (sites * layers, 2B, columns)
            for index in touched:
                site, layer = SITES[index // self.num_layers], index % self.num_layers
                self._fill(host[index], new.get((site, layer)))
            span = slice(touched[0], touched[-1] + 1)
            self.table.view(host.shape)[span].copy_(host[span], non_blocking=True)
            if self.table.is_cuda:
                self._copied = torch.cuda.Event()
                self._copied.record()
        self._set = new
        for site in SITES:
            self.active[site] = frozenset(layer for s, layer in new if s == site)

    def _fill(self, rows: Tensor, term: Term | None) -> None:
        """Write one (site, layer) block of the mirror, (2B, columns): the term's [alpha, keep,
        direction, push] (float64 before rounding to the table's float32) in the steered rows,
        the identity (alpha 0, keep 1) in the others and everywhere when there is no term."""
        rows.zero_()
        rows[:, 1] = 1.0
        if term is None:
            return
        alpha = float(term.alpha)
        direction = term.direction.detach().to("cpu", torch.float64)
        keep, scale = (1 / (1 + alpha), alpha / (1 + alpha)) if self.rule == "renorm" else (1.0, alpha)
        head = torch.tensor((alpha, keep), dtype=torch.float64)
        rows[: self.steered_rows] = torch.cat((head, direction, direction * scale))  # one write per knob move

    def apply(self, site: str, layer: int, h: Tensor) -> Tensor:
        """Steer activations h (2B, T, d_model) at (site, layer); identity where no term is set."""
        if not self.apply_all and layer not in self.active[site]:
            return h
        keep, push = self._slots[site, layer]
        return steer(h, keep, push, self.rule)


def steer(h: Tensor, keep: Tensor, push: Tensor, rule: str) -> Tensor:
    """The rule over the whole batch with per-row keep (2B, 1, 1) and push (2B, 1, d):
    renorm h * keep + ||h|| * push, add h + push. A row that is not steered has keep 1 and push 0,
    so it comes out numerically unchanged (h * 1 + 0)."""
    hf = h if h.dtype == torch.float32 else h.float()
    if rule == "renorm":
        # linalg.vector_norm, not Tensor.norm: the latter detours through a Python wrapper.
        steered = torch.addcmul(hf * keep, torch.linalg.vector_norm(hf, dim=-1, keepdim=True), push)
    else:
        steered = hf + push
    return steered if steered.dtype == h.dtype else steered.to(h.dtype)
