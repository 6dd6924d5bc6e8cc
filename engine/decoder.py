"""MusicGen's decoder as one pure forward function over preallocated buffers (gpt-fast style).

`FastDecoder` holds the weights of a transformers `MusicgenForConditionalGeneration` decoder in a
shape made for token-by-token decoding: q/k/v fused into one matmul, the codebook heads fused into
one. The fused weights are shared back into the transformers modules as views, so the model's own
`generate` still runs on exactly the same numbers (the benchmark's baseline) and no weight is held
twice.

`forward(...)` runs tokens at given positions through every layer, writes their self-attention
keys/values into a `KVCache` with `index_copy_` (positions are a device tensor, so one captured
graph serves every step) and returns the codebook logits. Steering is applied through the
`SteeringTensors` passed in, at the two sites the method needs: the residual stream entering a
layer, and a layer's self-attention output.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import GELUActivation

from .kv_cache import KVCache
from .steering import SteeringTensors


def _shared_linear(weight: Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


def _fuse_rows(modules: list[nn.Module]) -> Tensor:
    """Concatenate the weight rows of `modules` into one tensor and make each module's weight a view
    of it, so the fused copy is the only copy."""
    fused = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return fused


def _fuse_into(modules: list[nn.Linear]) -> nn.Linear:
    """Concatenate the weights of `modules` into one Linear and make each module a view of it."""
    return _shared_linear(_fuse_rows(modules))


def direct_call(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """`module` as a plain function: a Linear or LayerNorm as the bare torch op over its weights,
    anything else (a quantised Linear, an activation) as its own forward. This skips nn.Module's
    call machinery (hooks, which nothing here uses), which on a tiny model costs as much as the op."""
    if type(module) is nn.Linear:
        return partial(F.linear, weight=module.weight, bias=module.bias)
    if type(module) is nn.LayerNorm:
        return partial(torch.layer_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                       bias=module.bias, eps=module.eps)
    if type(module) is GELUActivation:
        return module.act  # its forward only calls this
    return module.forward


class LayerOps(NamedTuple):
    attn_norm: Callable[[Tensor], Tensor]
    wqkv: Callable[[Tensor], Tensor]
    wo: Callable[[Tensor], Tensor]
    cross_norm: Callable[[Tensor], Tensor]
    cross_q: Callable[[Tensor], Tensor]
    cross_o: Callable[[Tensor], Tensor]
    ffn_norm: Callable[[Tensor], Tensor]
    fc1: Callable[[Tensor], Tensor]
    act: Callable[[Tensor], Tensor]
    fc2: Callable[[Tensor], Tensor]


class FastLayer(nn.Module):
    def __init__(self, hf_layer: nn.Module) -> None:
        super().__init__()
        attn, cross = hf_layer.self_attn, hf_layer.encoder_attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.attn_norm = hf_layer.self_attn_layer_norm
        self.wqkv = _fuse_into([attn.q_proj, attn.k_proj, attn.v_proj])
        self.wo = attn.out_proj
        self.cross_norm = hf_layer.encoder_attn_layer_norm
        self.cross_q = cross.q_proj
        self.cross_k = cross.k_proj
        self.cross_v = cross.v_proj
        self.cross_o = cross.out_proj
        self.ffn_norm = hf_layer.final_layer_norm
        self.fc1 = hf_layer.fc1
        self.fc2 = hf_layer.fc2
        self.act = hf_layer.activation_fn
        self.bind()

    def bind(self) -> None:
        """(Re)make `ops`, the direct calls `forward` uses; after replacing a submodule, call again."""
        self.ops = LayerOps(*(direct_call(getattr(self, name)) for name in LayerOps._fields))

    # One decoded token (time = 1) is the hot path: there the head split and merge are plain views,
    # with no transpose (moving a size-1 axis does not change the memory order).
    def heads(self, x: Tensor) -> Tensor:
        """(batch, time, d_model) -> (batch, heads, time, head_dim)"""
        batch, time = x.shape[0], x.shape[1]
        if time == 1:
            return x.view(batch, self.num_heads, 1, self.head_dim)
        return x.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (batch, time, d_model) -> q, k, v, each (batch, heads, time, head_dim), from one matmul."""
        batch, time = x.shape[0], x.shape[1]
        qkv = self.ops.wqkv(x)
        if time == 1:
            return qkv.view(batch, 3, self.num_heads, 1, self.head_dim).unbind(1)
        return qkv.view(batch, time, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, time, head_dim) -> (batch, time, heads * head_dim)"""
    batch, heads, time, head_dim = x.shape
    if time == 1:
        return x.reshape(batch, 1, heads * head_dim)
    return x.transpose(1, 2).reshape(batch, time, heads * head_dim)


class FastDecoder(nn.Module):
    """The decoder weights of one loaded MusicGen, arranged for `forward`."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        decoder = hf_model.decoder.model.decoder
        config = hf_model.config.decoder
        self.num_codebooks = config.num_codebooks
        self.vocab_size = config.vocab_size
        self.d_model = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        # The codebooks' embedding tables stacked into one, read by one lookup at offset ids.
        self.register_buffer("embed_table", _fuse_rows(list(decoder.embed_tokens)), persistent=False)
        rows = decoder.embed_tokens[0].num_embeddings
        offsets = torch.arange(self.num_codebooks, device=self.embed_table.device)[:, None] * rows
        self.register_buffer("embed_offsets", offsets, persistent=False)
        # transformers grows this table on demand; we read it directly by position index.
        self.register_buffer("pos_table", decoder.embed_positions.weights, persistent=False)
        self.layers = nn.ModuleList(FastLayer(layer) for layer in decoder.layers)
        self.final_norm = decoder.layer_norm
        self.lm_head = _fuse_into(list(hf_model.decoder.lm_heads))
        # Optional text-to-decoder projection (present when the text encoder's width differs).
        self.enc_to_dec_proj = getattr(hf_model, "enc_to_dec_proj", None)
        self.bind()

    def bind(self) -> None:
        """(Re)make the direct calls `forward` uses, here and in every layer (see `direct_call`)."""
        for layer in self.layers:
            layer.bind()
        self.final_norm_op, self.lm_head_op = direct_call(self.final_norm), direct_call(self.lm_head)

    @torch.no_grad()
    def fill_cross_attention(self, cache: KVCache, text_states: Tensor, text_mask: Tensor) -> None:
        """Compute every layer's cross-attention keys/values for a prompt, once, into `cache`.

        text_states: (2B, S, d_text) encoder output, conditional rows first, unconditional rows zero.
        text_mask:   (2B, S) 1 for real text tokens, 0 for padding and for the unconditional half.
        """
        if self.enc_to_dec_proj is not None:
            text_states = self.enc_to_dec_proj(text_states)
        # As transformers does: padded (and unconditional) encoder states are zeroed before use.
        text_states = text_states * text_mask[..., None].to(text_states.dtype)
        keys = [layer.heads(layer.cross_k(text_states)) for layer in self.layers]
        values = [layer.heads(layer.cross_v(text_states)) for layer in self.layers]
        cache.set_cross(torch.stack(keys), torch.stack(values), text_mask)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def self_attention_mask(positions: Tensor, key_len: int) -> Tensor:
    """Boolean (T, key_len) mask: the query at position p sees keys at positions <= p."""
    keys = torch.arange(key_len, device=positions.device)
    return keys[None, :] <= positions[:, None]


@torch.no_grad()
def forward(
    dec: FastDecoder,
    tokens: Tensor,
    positions: Tensor,
    cache: KVCache,
    steering: SteeringTensors,
    attend_len: int | None,
    capture: dict[str, Tensor] | None = None,
) -> Tensor:
    """Run `tokens` (2B, K, T) at `positions` (T,) through the decoder; return logits (2B, K, T, V).

    attend_len: eager callers pass the number of valid cache positions (a Python int) so attention
    reads only those; a captured graph passes None and attends over the whole cache with a mask.
    capture: if given, filled with the residual stream entering each layer ("residual.{i}") and each
    self-attention output ("attention.{i}"), after steering, and the stream entering each layer
    before its steering ("unsteered.{i}"), for the whole CFG batch (the conditional rows first).
    """
    batch, _, steps = tokens.shape
    # One lookup for every codebook, summed in transformers' order (codebook 0 first) so the sum
    # rounds exactly as theirs does.
    embedded = torch.embedding(dec.embed_table, tokens + dec.embed_offsets).unbind(1)  # F.embedding's checks cost
    hidden = embedded[0]
    for e in embedded[1:]:
        hidden = hidden + e
    hidden = hidden + dec.pos_table.index_select(0, positions).to(hidden.dtype)

    key_len = cache.max_len if attend_len is None else attend_len
    # One decoded token attending to every valid position needs no mask at all.
    mask = None if (steps == 1 and attend_len is not None) else self_attention_mask(positions, key_len)
    cross_mask = cache.cross_mask

    for i, layer in enumerate(dec.layers):
        ops = layer.ops
        if capture is not None:  # before this token's intervention: what the music so far makes of it
            capture[f"unsteered.{i}"] = hidden
        hidden = steering.apply("residual", i, hidden)
        if capture is not None:
            capture[f"residual.{i}"] = hidden
        q, k, v = layer.qkv_heads(ops.attn_norm(hidden))
        k_all, v_all = cache.write(i, positions, k, v, key_len)
        attn = _attend(q, k_all, v_all, mask, layer.scaling)
        attn = ops.wo(merge_heads(attn))
        attn = steering.apply("attention", i, attn)
        if capture is not None:
            capture[f"attention.{i}"] = attn
        hidden = hidden + attn

        query = layer.heads(ops.cross_q(ops.cross_norm(hidden)))
        cross = _attend(query, cache.cross_k_layers[i], cache.cross_v_layers[i], cross_mask, layer.scaling)
        hidden = hidden + ops.cross_o(merge_heads(cross))

        hidden = hidden + ops.fc2(ops.act(ops.fc1(ops.ffn_norm(hidden))))

    logits = dec.lm_head_op(dec.final_norm_op(hidden))  # (2B, T, K*V)
    return logits.view(batch, steps, dec.num_codebooks, dec.vocab_size).transpose(1, 2)
