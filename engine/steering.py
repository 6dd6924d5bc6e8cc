"""Steering terms as preallocated tensors, applied inside the decoder's forward pass.

A term is (site, layer, direction, alpha). Sites:
  residual  - the residual stream entering decoder layer L (the output of layer L-1);
  attention - the output of layer L's self-attention, before it joins the residual stream.
Rules, applied per token to the rows being steered (the conditional half of the CFG batch by
default, both halves with steer_both):
  renorm (default, the paper authors' code): h <- (h + alpha * ||h|| * v) / (1 + alpha)
  add:                                       h <- h + alpha * v
with v a unit direction. alpha = 0 leaves h bit-identical under both rules.

All values live in tensors allocated once and updated in place with copy_, so a change between two
steps never reallocates and a captured graph needs no recapture. `active` mirrors on the host which
(site, layer) slots hold a term, so eager decoding skips the others; a captured graph sets
`apply_all` and computes every slot (an empty slot has alpha = 0, which is exact identity).
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
        self.alpha = {site: torch.zeros(num_layers, device=device) for site in SITES}
        self.direction = {site: torch.zeros(num_layers, d_model, device=device) for site in SITES}
        rows = torch.zeros(2 * batch, 1, 1, dtype=torch.bool, device=device)
        rows[: 2 * batch if steer_both else batch] = True
        self.rows = rows
        self.active: dict[str, frozenset[int]] = {site: frozenset() for site in SITES}

    def set_terms(self, terms: list[Term]) -> None:
        """Replace every term. Slots not named get alpha 0."""
        seen: set[tuple[str, int]] = set()
        alpha = {site: torch.zeros_like(self.alpha[site]) for site in SITES}
        direction = {site: torch.zeros_like(self.direction[site]) for site in SITES}
        for term in terms:
            if term.site not in SITES:
                raise MusicsteerError(f"unknown steering site {term.site!r} (known: {', '.join(SITES)})")
            if not 0 <= term.layer < self.num_layers:
                raise MusicsteerError(f"layer {term.layer} out of range: this model has layers 0-{self.num_layers - 1}")
            if (term.site, term.layer) in seen:
                raise MusicsteerError(f"two terms at {term.site} layer {term.layer}; mix their vectors instead")
            seen.add((term.site, term.layer))
            alpha[term.site][term.layer] = term.alpha
            direction[term.site][term.layer] = term.direction.to(direction[term.site].device, torch.float32)
        for site in SITES:
            self.alpha[site].copy_(alpha[site])
            self.direction[site].copy_(direction[site])
            self.active[site] = frozenset(layer for s, layer in seen if s == site)

    def apply(self, site: str, layer: int, h: Tensor) -> Tensor:
        """Steer activations h (2B, T, d_model) at (site, layer); identity where no term is set."""
        if not self.apply_all and layer not in self.active[site]:
            return h
        return steer(h, self.alpha[site][layer], self.direction[site][layer], self.rows, self.rule)


def steer(h: Tensor, alpha: Tensor, direction: Tensor, rows: Tensor, rule: str) -> Tensor:
    """The steering rule on the selected batch rows of h; the other rows are returned untouched."""
    hf = h.float()
    if rule == "renorm":
        steered = (hf + alpha * hf.norm(dim=-1, keepdim=True) * direction) / (1 + alpha)
    else:
        steered = hf + alpha * direction
    return torch.where(rows, steered.to(h.dtype), h)
