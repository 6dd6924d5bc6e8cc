"""MusicGen's delay pattern for one context window.

Codebook k runs `delay[k]` positions behind codebook 0 (delay = k for mono; stereo checkpoints
interleave left/right codebooks, so codebooks 2c and 2c+1 both have delay c). Position 0 holds the
start token; codebook k holds frame f at position f + 1 + delay[k]. Hence frame f is complete once
position f + 1 + max_delay has been sampled, and the stream yields a whole frame per step after the
first max_delay steps.

Frames may be known in advance, per codebook: an audio prompt, or the tail of the previous window
when an endless session re-prefills. Known tokens are forced wherever the layout reaches them (as
transformers' delay-pattern mask forces prompt tokens), so generation continues exactly where the
known material stops. `end_frame` makes the layout pad codebooks past the last wanted frame, as
`generate` does at the end of a finite sequence; that is what makes a finite render bit-identical
to `generate`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DelayPattern:
    def __init__(self, num_codebooks: int, audio_channels: int, pad_id: int, batch: int, capacity: int,
                 device: torch.device) -> None:
        self.num_codebooks = num_codebooks
        self.pad_id = pad_id
        self.delays = [k // audio_channels for k in range(num_codebooks)]
        self.max_delay = max(self.delays)
        self._delays_t = torch.tensor(self.delays, device=device)
        self._codebooks_t = torch.arange(num_codebooks, device=device)
        self.codes = torch.full((batch, num_codebooks, capacity), -1, dtype=torch.long, device=device)
        # Mono delays are 0, 1, ..., K-1: the tokens of one position then sit on an anti-diagonal of
        # `codes`, a strided view (see `_diagonal`), so recording them is one copy, not an index_put.
        self._uniform = self.delays == list(range(num_codebooks))
        self.known = [0] * num_codebooks
        self.end_frame: int | None = None

    def reset(self, known: list[Tensor] | Tensor | None = None) -> None:
        """Start a window. known: per codebook a (B, n_k) tensor of frames known in advance, or one
        (B, K, F) tensor (the same F frames for every codebook), or None."""
        self.codes.fill_(-1)
        self.end_frame = None
        if known is None:
            self.known = [0] * self.num_codebooks
            return
        rows = list(known.unbind(1)) if isinstance(known, Tensor) else known
        if len(rows) != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} codebooks of known frames, got {len(rows)}")
        self.known = [int(r.shape[-1]) for r in rows]
        for k, r in enumerate(rows):
            self.codes[:, k, : r.shape[-1]] = r.to(self.codes.device)

    @property
    def prefill_length(self) -> int:
        """Positions 0..P whose tokens are all known (or padding): P + 1 tokens to prefill."""
        return min(n + d for n, d in zip(self.known, self.delays, strict=True)) + 1

    def prefill_tokens(self) -> Tensor:
        """(B, K, P+1) tokens for positions 0..P in the delayed layout."""
        length = self.prefill_length
        positions = torch.arange(length, device=self.codes.device)
        frames = positions[None, :] - 1 - self._delays_t[:, None]  # (K, P+1)
        gathered = self.codes.gather(2, frames.clamp(min=0).expand(self.codes.shape[0], -1, -1))
        return torch.where(frames[None] >= 0, gathered, torch.full_like(gathered, self.pad_id))

    def resolve(self, position: int, sampled: Tensor) -> Tensor:
        """Tokens (B, K) at `position` given sampled ones: padding before a codebook starts and past
        end_frame, known tokens where known, else the sample (recorded as that codebook's frame)."""
        first = position - 1 - self.max_delay  # the frame the most-delayed codebook is at
        if first >= max(self.known) and self.end_frame is None:
            # Steady state: every codebook takes its sample. Record them at their frames.
            if self._uniform:
                self._diagonal(position - 1).copy_(sampled)
            else:
                self.codes[:, self._codebooks_t, position - 1 - self._delays_t] = sampled
            return sampled
        tokens = sampled.clone()
        for k, delay in enumerate(self.delays):
            frame = position - 1 - delay
            if frame < 0 or (self.end_frame is not None and frame >= self.end_frame):
                tokens[:, k].fill_(self.pad_id)  # not `= pad_id`: that makes a CPU scalar tensor per call
            elif frame < self.known[k]:
                tokens[:, k] = self.codes[:, k, frame]
            else:
                self.codes[:, k, frame] = sampled[:, k]
        return tokens

    def _diagonal(self, frame: int) -> Tensor:
        """View (B, K) of codes[b, k, frame - k]: one step along k moves one row down, one frame back."""
        batch, codebooks, capacity = self.codes.shape
        return self.codes.as_strided((batch, codebooks), (codebooks * capacity, capacity - 1),
                                     self.codes.storage_offset() + frame)

    def completed_frame(self, position: int) -> int | None:
        """Index of the frame that `position` completes, if it is newly generated (not known)."""
        frame = position - 1 - self.max_delay
        if frame < 0 or frame < min(self.known):
            return None
        if self.end_frame is not None and frame >= self.end_frame:
            return None
        return frame

    def frame(self, index: int) -> Tensor:
        return self.codes[:, :, index]
