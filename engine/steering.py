"""Steering terms as preallocated tensors, applied inside the decoder's forward pass.

A term is (site, layer, direction, alpha). Sites:
  residual  - the residual stream entering decoder layer L (the output of layer L-1);
  attention - the output of layer L's self-attention, before it joins the residual stream.
Rules, applied per token to the rows being steered (the conditional half of the CFG batch by
default, both halves with steer_both):
  renorm (default, the paper authors' code): h <- (h + alpha * ||h|| * v) / (1 + alpha)
  add:                                       h <- h + alpha * v
with v a unit direction. alpha = 0 leaves h bit-identical under both rules.

All values live in one table allocated once and updated in place with one copy_, so a change between
two steps never reallocates and a captured graph needs no recapture; the new values are assembled on
the host (pinned memory on CUDA) and copied without blocking, so a knob move costs the token no
host sync. `active` mirrors on the host which (site, layer) slots hold a term, so eager decoding
skips the others; a captured graph sets `apply_all` and computes every slot (an empty slot has
alpha = 0, which is exact identity).

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
        # One table, columns [alpha, keep, direction (d), push (d)] per (site, layer); the names
        # below are views into it.
        self.table = torch.zeros(len(SITES), num_layers, 2 + 2 * d_model, device=device)
        self.alpha = {site: self.table[i, :, 0] for i, site in enumerate(SITES)}
        self._keep = {site: self.table[i, :, 1] for i, site in enumerate(SITES)}
        self.direction = {site: self.table[i, :, 2 : 2 + d_model] for i, site in enumerate(SITES)}
        self._push = {site: self.table[i, :, 2 + d_model :] for i, site in enumerate(SITES)}
        # Per-slot views, made once (the table never moves): selecting them every token costs ops.
        # The add rule has no keep factor; its slots see a constant 1 that `steer` ignores.
        ones = torch.ones(num_layers, device=device)
        self._slots = {(site, layer): (self._keep[site][layer] if rule == "renorm" else ones[layer],
                                       self._push[site][layer])
                       for site in SITES for layer in range(num_layers)}
        rows = torch.zeros(2 * batch, 1, 1, dtype=torch.bool, device=device)
        rows[: 2 * batch if steer_both else batch] = True
        self.rows = rows
        self.active: dict[str, frozenset[int]] = {site: frozenset() for site in SITES}
        self.set_terms([])

    def set_terms(self, terms: list[Term]) -> None:
        """Replace every term. Slots not named get alpha 0."""
        seen: set[tuple[str, int]] = set()
        table = self.table
        host = torch.zeros(table.shape, pin_memory=table.is_cuda)
        host[:, :, 1] = 1.0  # keep = 1: identity
        d_model = (table.shape[2] - 2) // 2
        for term in terms:
            if term.site not in SITES:
                raise MusicsteerError(f"unknown steering site {term.site!r} (known: {', '.join(SITES)})")
            if not 0 <= term.layer < self.num_layers:
                raise MusicsteerError(f"layer {term.layer} out of range: this model has layers 0-{self.num_layers - 1}")
            if (term.site, term.layer) in seen:
                raise MusicsteerError(f"two terms at {term.site} layer {term.layer}; mix their vectors instead")
            seen.add((term.site, term.layer))
            row = host[SITES.index(term.site), term.layer]
            alpha = torch.tensor(term.alpha, dtype=torch.float64)
            direction = term.direction.detach().to("cpu", torch.float64)
            row[0] = alpha
            row[2 : 2 + d_model] = direction
            if self.rule == "renorm":
                row[1] = 1 / (1 + alpha)
                row[2 + d_model :] = alpha / (1 + alpha) * direction
            else:
                row[2 + d_model :] = alpha * direction
        # Pinned memory on CUDA: an asynchronous copy that the next step is queued behind; torch's
        # caching host allocator keeps the block alive until the copy has run.
        table.copy_(host, non_blocking=True)
        for site in SITES:
            self.active[site] = frozenset(layer for s, layer in seen if s == site)

    def apply(self, site: str, layer: int, h: Tensor) -> Tensor:
        """Steer activations h (2B, T, d_model) at (site, layer); identity where no term is set."""
        if not self.apply_all and layer not in self.active[site]:
            return h
        keep, push = self._slots[site, layer]
        return steer(h, keep, push, self.rows, self.rule)


def steer(h: Tensor, keep: Tensor, push: Tensor, rows: Tensor, rule: str) -> Tensor:
    """The steering rule on the selected batch rows of h; the other rows are returned untouched.
    renorm: h * keep + ||h|| * push; add: h + push (keep and push as SteeringTensors makes them)."""
    hf = h if h.dtype == torch.float32 else h.float()
    steered = torch.addcmul(hf * keep, hf.norm(dim=-1, keepdim=True), push) if rule == "renorm" else hf + push
    return torch.where(rows, steered if steered.dtype == h.dtype else steered.to(h.dtype), h)
