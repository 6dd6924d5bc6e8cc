"""Classifier-free guidance and MusicGen's sampling (top-k 250, temperature 1, optional top-p).

The order of operations follows transformers' logits processors (CFG mix, then temperature, top-k,
top-p), so greedy decoding reproduces `generate(do_sample=False)` exactly. Randomness comes from a
seeded `torch.Generator` owned by the session, never from the global RNG, so a run is reproducible
and a seed change mid-session takes effect at a known token.
"""

from __future__ import annotations

import torch
from torch import Tensor


def guided_logits(logits: Tensor, guidance: float) -> Tensor:
    """logits (2B, ...) with the conditional half first -> uncond + (cond - uncond) * guidance."""
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + (cond - uncond) * guidance


def is_greedy(temperature: float, top_k: int) -> bool:
    return temperature <= 0 or top_k == 1


def sample_tokens(
    logits: Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Draw one token per row from logits (..., V). top_k 0 and top_p 0 (or 1) mean 'off'."""
    if is_greedy(temperature, top_k):
        return logits.argmax(dim=-1)
    scores = logits / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0 < top_p < 1:
        scores = _top_p_filter(scores, top_p)
    probs = torch.softmax(scores, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _top_p_filter(scores: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (as transformers' TopPLogitsWarper)."""
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))
