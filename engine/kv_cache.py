"""Preallocated key/value buffers for the decoder (no torch.cat per step, no growth).

Self-attention keys/values live in `(layers, 2B, heads, max_len, head_dim)` buffers written in place
at a position tensor, as in gpt-fast: the buffers never move, so a captured CUDA graph stays valid.
Cross-attention keys/values are computed once per prompt; they are padded to a bucketed text length
so a new prompt of similar length swaps in place (same shapes) at a token boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Text lengths are padded up to a multiple of this, so most prompt changes keep the buffer shapes.
TEXT_BUCKET = 32


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, batch, num_heads, max_len, head_dim)
        self.max_len = max_len
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Per-layer views, made once: indexing the 5-d buffers every layer of every step costs ops.
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)
        self.cross_k_layers: tuple[Tensor, ...] = ()
        self.cross_v_layers: tuple[Tensor, ...] = ()
        self.cross_k: Tensor | None = None
        self.cross_v: Tensor | None = None
        self.cross_mask: Tensor | None = None

    def write(self, layer: int, positions: Tensor, k: Tensor, v: Tensor, key_len: int) -> tuple[Tensor, Tensor]:
        """Store k/v (2B, H, T, D) at `positions`; return the first `key_len` cached positions."""
        k_all, v_all = self.k_layers[layer], self.v_layers[layer]
        k_all.index_copy_(2, positions, k)
        v_all.index_copy_(2, positions, v)
        return k_all.narrow(2, 0, key_len), v_all.narrow(2, 0, key_len)

    def set_cross(self, keys: Tensor, values: Tensor, text_mask: Tensor) -> None:
        """Install cross-attention k/v (layers, 2B, H, S, D) and the text mask (2B, S).

        Pads S to the bucket; padded and masked positions get a large negative additive bias, so
        they receive exactly zero weight. The unconditional half is fully masked: its values are
        zero (the encoder states are zeroed and the projections have no bias), so its
        cross-attention output is zero, as in transformers.
        """
        length = keys.shape[3]
        padded = -(-length // TEXT_BUCKET) * TEXT_BUCKET
        pad = padded - length
        if pad:
            keys = torch.nn.functional.pad(keys, (0, 0, 0, pad))
            values = torch.nn.functional.pad(values, (0, 0, 0, pad))
            text_mask = torch.nn.functional.pad(text_mask, (0, pad))
        bias = torch.zeros(text_mask.shape, dtype=keys.dtype, device=keys.device)
        bias.masked_fill_(text_mask == 0, torch.finfo(keys.dtype).min)
        bias = bias[:, None, None, :]
        if self.cross_k is not None and self.cross_k.shape == keys.shape:
            # Same shapes: update in place so anything holding these buffers (a graph) sees the new prompt.
            self.cross_k.copy_(keys)
            self.cross_v.copy_(values)
            self.cross_mask.copy_(bias)
        else:
            self.cross_k, self.cross_v, self.cross_mask = keys.contiguous(), values.contiguous(), bias
            self.cross_k_layers, self.cross_v_layers = self.cross_k.unbind(0), self.cross_v.unbind(0)

    def clear(self) -> None:
        self.k.zero_()
        self.v.zero_()
