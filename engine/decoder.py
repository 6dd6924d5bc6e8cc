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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kv_cache import KVCache
from .steering import SteeringTensors


def _shared_linear(weight: Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


def _fuse_into(modules: list[nn.Linear]) -> nn.Linear:
    """Concatenate the weights of `modules` into one Linear and make each module a view of it."""
    fused = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return _shared_linear(fused)


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

    def heads(self, x: Tensor) -> Tensor:
        """(batch, time, d_model) -> (batch, heads, time, head_dim)"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)


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
        self.embed_tokens = decoder.embed_tokens
        # transformers grows this table on demand; we read it directly by position index.
        self.register_buffer("pos_table", decoder.embed_positions.weights, persistent=False)
        self.layers = nn.ModuleList(FastLayer(layer) for layer in decoder.layers)
        self.final_norm = decoder.layer_norm
        self.lm_head = _fuse_into(list(hf_model.decoder.lm_heads))
        # Optional text-to-decoder projection (present when the text encoder's width differs).
        self.enc_to_dec_proj = getattr(hf_model, "enc_to_dec_proj", None)

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
    hidden = sum(dec.embed_tokens[k](tokens[:, k]) for k in range(dec.num_codebooks))
    hidden = hidden + dec.pos_table[positions].to(hidden.dtype)

    key_len = cache.max_len if attend_len is None else attend_len
    # One decoded token attending to every valid position needs no mask at all.
    mask = None if (steps == 1 and attend_len is not None) else self_attention_mask(positions, key_len)
    cross_mask = cache.cross_mask

    for i, layer in enumerate(dec.layers):
        if capture is not None:  # before this token's intervention: what the music so far makes of it
            capture[f"unsteered.{i}"] = hidden
        hidden = steering.apply("residual", i, hidden)
        if capture is not None:
            capture[f"residual.{i}"] = hidden
        x = layer.attn_norm(hidden)
        q, k, v = layer.wqkv(x).split(dec.d_model, dim=-1)
        k_all, v_all = cache.write(i, positions, layer.heads(k), layer.heads(v), key_len)
        attn = _attend(layer.heads(q), k_all, v_all, mask, layer.scaling)
        attn = layer.wo(attn.transpose(1, 2).reshape(batch, steps, dec.d_model))
        attn = steering.apply("attention", i, attn)
        if capture is not None:
            capture[f"attention.{i}"] = attn
        hidden = hidden + attn

        x = layer.cross_norm(hidden)
        query = layer.heads(layer.cross_q(x))
        cross = _attend(query, cache.cross_k[i], cache.cross_v[i], cross_mask, layer.scaling)
        hidden = hidden + layer.cross_o(cross.transpose(1, 2).reshape(batch, steps, dec.d_model))

        x = layer.ffn_norm(hidden)
        hidden = hidden + layer.fc2(layer.act(layer.fc1(x)))

    hidden = dec.final_norm(hidden)
    logits = dec.lm_head(hidden)  # (2B, T, K*V)
    return logits.view(batch, steps, dec.num_codebooks, dec.vocab_size).transpose(1, 2)
