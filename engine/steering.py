"""Steering terms as preallocated tensors, applied inside the decoder's forward pass.

A term is (site, layer, direction, alpha). Sites:
  residual  - the residual stream entering decoder layer L (the output of layer L-1);
  attention - the output of layer L's self-attention, before it joins the residual stream.
Rules, applied per token to the rows being steered (the conditional half of the CFG batch by
default, both halves with steer_both; the other rows come out numerically unchanged):
  renorm (default, the paper authors' code): h <- (h + alpha * ||h|| * v) / (1 + alpha)
  add:                                       h <- h + alpha * v
with v a unit direction. alpha = 0 leaves h unchanged under both rules (h * 1 + 0).

A batch of B streams (the CFG batch is [conditional rows 0..B-1, unconditional rows 0..B-1]) steers
each stream with its own terms: `set_terms(terms, row=b)` sets stream b's, which land in CFG row b
(and row B + b with steer_both); `set_terms(terms)` gives every stream the same ones (B = 1: the one).

All values live in one table allocated once and updated in place, so a change between two steps
never reallocates and a captured graph needs no recapture. A host mirror of the table is edited in
the rows a change touches, and only those rows are copied, without blocking (on CUDA through one of
two pinned staging buffers, each reused only once the copy from it two changes ago has run): a
knob moving every token (a glide, a performer's hand) costs some microseconds of host time and no
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

from .errors import MusicsteerError, OutOfRange, shown
from .params import RULES, SITES


def check_alpha(alpha: float, rule: str) -> None:
    """renorm divides by 1 + alpha: alpha must stay above -1 (the add rule takes any alpha)."""
    if rule == "renorm" and alpha <= -1:
        raise OutOfRange(f"alpha {shown(alpha, 24)} needs to be above -1 with the renorm rule (it divides by "
                         "1 + alpha); for stronger negative steering use --steer-rule add")


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
        self.batch = batch
        self.batch_rows = 2 * batch
        self.steer_both = steer_both
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
        self._terms: list[dict[tuple[str, int], Term]] = [{} for _ in range(batch)]  # each stream's, by slot
        self._host = torch.zeros(self.table.shape)
        self._host[..., 1] = 1.0  # keep = 1: identity
        self.table.copy_(self._host)
        # CUDA: pinned staging buffers, used in turn, and the event of the last copy out of each.
        self._staging = [torch.empty(self.table.shape, pin_memory=True) for _ in range(2)] if self.table.is_cuda else []
        self._staged: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def set_terms(self, terms: list[Term], row: int | None = None) -> None:
        """Replace every term of stream `row` (None: of every stream). Slots not named get alpha 0.
        Invalid terms change nothing."""
        new: dict[tuple[str, int], Term] = {}
        for term in terms:
            if term.site not in SITES:
                raise MusicsteerError(f"unknown steering site {term.site!r} (known: {', '.join(SITES)})")
            if not 0 <= term.layer < self.num_layers:
                raise MusicsteerError(f"layer {term.layer} out of range: this model has layers 0-{self.num_layers - 1}")
            if (term.site, term.layer) in new:
                raise MusicsteerError(f"two terms at {term.site} layer {term.layer}; mix their vectors instead")
            new[term.site, term.layer] = term
        rows = range(self.batch) if row is None else (row,)
        per_row = [new if r in rows else self._terms[r] for r in range(self.batch)]
        touched = {slot for r in rows for slot in self._terms[r]} | new.keys()
        blocks = {self._row(*slot): self._block([terms.get(slot) for terms in per_row])
                  for slot in touched}  # built first: a failure changes nothing
        host = self._host.view(-1, *self._host.shape[2:])  # (sites * layers, 2B, columns)
        for index, block in blocks.items():
            host[index] = block
        self._copy([slice(first, last + 1) for first, last in _runs(sorted(blocks))])
        self._terms = per_row
        for site in SITES:
            self.active[site] = frozenset(layer for terms in per_row for s, layer in terms if s == site)

    def _row(self, site: str, layer: int) -> int:
        return SITES.index(site) * self.num_layers + layer

    def _copy(self, spans: list[slice]) -> None:
        """Copy spans of mirror rows (of the (sites * layers) flattening) into the table, without
        blocking. On CUDA through this change's staging buffer, whose last use (two changes ago)
        must have been copied out before it is overwritten."""
        table = self.table.view(-1, *self.table.shape[2:])
        host = self._host.view(table.shape)
        if not self.table.is_cuda:
            for rows in spans:
                table[rows].copy_(host[rows])
            return
        turn, self._turn = self._turn, 1 - self._turn
        if self._staged[turn] is not None:
            self._staged[turn].synchronize()  # normally long done; at most it keeps the host ~2 changes ahead
        staging = self._staging[turn].view(table.shape)
        for rows in spans:
            staging[rows].copy_(host[rows])
            table[rows].copy_(staging[rows], non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.table.device))
        self._staged[turn] = event

    def _block(self, terms: list[Term | None]) -> Tensor:
        """One (site, layer) block of the table, (2B, columns), from each stream's term there (None:
        none): the term's [alpha, keep, direction, push] (float64 before rounding to the table's
        float32) in its stream's conditional row (and unconditional row with steer_both), the
        identity (alpha 0, keep 1) in every other row."""
        block = torch.zeros(self._host.shape[2:], dtype=torch.float64)
        block[:, 1] = 1.0
        for row, term in enumerate(terms):
            if term is None:
                continue
            alpha = float(term.alpha)
            check_alpha(alpha, self.rule)
            direction = term.direction.detach().to("cpu", torch.float64)
            keep, scale = (1 / (1 + alpha), alpha / (1 + alpha)) if self.rule == "renorm" else (1.0, alpha)
            head = torch.tensor((alpha, keep), dtype=torch.float64)
            steered = (row, self.batch + row) if self.steer_both else (row,)
            block[list(steered)] = torch.cat((head, direction, direction * scale))
        return block

    def apply(self, site: str, layer: int, h: Tensor) -> Tensor:
        """Steer activations h (2B, T, d_model) at (site, layer); identity where no term is set."""
        if not self.apply_all and layer not in self.active[site]:
            return h
        keep, push = self._slots[site, layer]
        return steer(h, keep, push, self.rule)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices -> (first, last) of each run of consecutive ones: one copy per run."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


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
