"""Classifier-free guidance and MusicGen's sampling (top-k 250, temperature 1, optional top-p and min-p).

The sampler's settings are one value, `Sampler`: a frozen dataclass with one field per row of the
parameter table whose effect is "sampler" (engine/params.py), passed whole to `sample_tokens` and to
the captured step's buffers (engine/graph.py, `GraphDecoder.set_sampling`). The order of operations
follows transformers' logits processors (CFG mix, then temperature, top-k, top-p, min-p: the order of
`GenerationMixin._get_logits_processor`), so greedy decoding reproduces `generate(do_sample=False)`
exactly and a sampled draw follows the distribution its warpers leave (tests/test_graph.py,
tests/test_min_p.py). Randomness comes from a
seeded `torch.Generator` owned by the session (one per stream of a batch), never from the global
RNG, so a run is reproducible and a seed change mid-session takes effect at a known token.

Sampling draws among the top-k candidates only: `topk` finds them (unsorted, unless top-p needs
their ranking), and the draw is over k probabilities instead of the whole vocabulary. The
distribution is exactly the masked full-vocabulary one (filtered tokens have probability 0 either
way); the work per token is a fraction (on the CPU the full-vocabulary draw was a third of a tiny
model's step). The draw is the exponential race argmax(p / Exp(1)), which is what
`torch.multinomial` does for one sample (tests/test_graph.py checks the two agree draw for draw),
without its host-side validity check. The captured CUDA step (engine/graph.py) calls these same
functions, so both paths draw the same tokens from the same generator state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .params import SAMPLER

# The sampler's settings, one field per "sampler" row of the table (its name, its default): guidance,
# temperature, top_k, top_p, min_p. Frozen: equal settings compare equal (the captured step writes its
# buffers only when they change) and a batch shares one.
Sampler = dataclasses.make_dataclass(
    "Sampler", [(name, float | int, dataclasses.field(default=row.default)) for name, row in SAMPLER.items()],
    frozen=True)
Sampler.__doc__ = "The sampler's settings: one field per row of params.SAMPLER (top_k/top_p/min_p 0 = off)."


def sampler_of(values: Any) -> Any:
    """The `Sampler` a control state's values (`Controls`, fields named by status key) describe."""
    return Sampler(**{name: getattr(values, row.status) for name, row in SAMPLER.items()})


def guided_logits(logits: Tensor, guidance: float | Tensor) -> Tensor:
    """logits (2B, ...) laid out [conditional rows 0..B-1, unconditional rows 0..B-1] -> (B, ...):
    uncond + (cond - uncond) * guidance, stream by stream."""
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + (cond - uncond) * guidance


def is_greedy(temperature: float, top_k: int) -> bool:
    return temperature <= 0 or top_k == 1


def candidate_count(top_k: int, vocab: int) -> int:
    """How many candidates a draw considers: top_k, or the whole vocabulary when top-k is off (0)."""
    return top_k if 0 < top_k < vocab else vocab


def candidates(scores: Tensor, k: int, top_p_floor: float | Tensor | None,
               min_p: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k best scores (..., V) -> (probabilities (..., k), their token ids (..., k)).

    top_p_floor: 1 - top_p, or None for no top-p. As transformers' TopPLogitsWarper, ranked from the
    least likely up, the candidates whose cumulative probability stays <= the floor are dropped,
    and the most likely is always kept.

    min_p: a fraction in (0, 1], or None for no min-p. Min-p sampling (Nguyen et al. 2024, "Turning Up
    the Heat: Min-p Sampling for Creative and Coherent LLM Outputs", arXiv:2407.01082; transformers'
    MinPLogitsWarper): keep the candidates whose probability is >= min_p x the most likely one's. It
    runs last, after temperature, top-k and top-p, as in transformers, on the probabilities of what
    they left (a ratio of two probabilities is the same before and after renormalising, so the cut
    is the warper's); the most likely always stays. A tensor floor or min-p (the captured step)
    computes the same comparisons as a float one, so both paths drop the same candidates."""
    values, ids = scores.topk(k, dim=-1, sorted=top_p_floor is not None)  # sorted: descending
    if top_p_floor is not None:
        ascending = values.flip(-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= top_p_floor
        drop[..., -1].fill_(False)  # always keep the most likely (`= False` would make a CPU scalar tensor)
        values = values.masked_fill(drop.flip(-1), float("-inf"))
    if min_p is not None:
        probs = values.softmax(dim=-1)
        values = values.masked_fill(probs < probs.amax(dim=-1, keepdim=True) * min_p, float("-inf"))
    # In token-id order: the race pairs each candidate with one noise draw by position, and topk's order
    # follows the last bits of the scores (the eager and the captured step differ by ~1e-7): by id, both
    # paths (and any two machines) pair the same token with the same draw.
    ids, order = ids.sort(dim=-1)
    return values.gather(-1, order).softmax(dim=-1), ids


def top_p_floor(top_p: float) -> float | None:
    """The drop threshold for `candidates`: 1 - top_p, or None when top-p is off (0 or >= 1)."""
    return 1 - top_p if 0 < top_p < 1 else None


def min_p_cut(min_p: float) -> float | None:
    """The min-p fraction for `candidates`, or None when min-p is off (0)."""
    return min_p if min_p > 0 else None


Generators = torch.Generator | Sequence[torch.Generator] | None


def draw(probs: Tensor, ids: Tensor, generator: Generators) -> Tensor:
    """One token per row: the exponential race over the candidates' probabilities (..., k).

    generator: one for the whole draw, or a sequence of one per batch stream (probs' first axis, B):
    stream b's noise then comes from its own generator only, in the amount and order a B = 1 draw
    of the same shape takes (a contiguous slice of the same size), so stream b of a batch draws
    exactly what a lone session seeded as b's generator draws."""
    race = torch.empty_like(probs)
    if isinstance(generator, Sequence):
        for stream, own in zip(race, generator, strict=True):
            stream.exponential_(1, generator=own)
    else:
        race.exponential_(1, generator=generator)
    choice = (probs / race).argmax(dim=-1, keepdim=True)
    return ids.gather(-1, choice).squeeze(-1)


def sample_tokens(logits: Tensor, sampler: Any, generator: Generators) -> Tensor:
    """Draw one token per row from CFG-mixed logits (..., V) with a `Sampler`'s settings (its guidance
    is the caller's, applied before: `guided_logits`). top_k, top_p and min_p 0 (top_p 1) mean 'off'."""
    temperature = sampler.temperature
    if is_greedy(temperature, sampler.top_k):
        return logits.argmax(dim=-1)
    # Times the reciprocal, as the captured step does with a tensor: CUDA turns a division by a
    # Python number into exactly this, but a division by a device tensor into a true division.
    scores = logits if temperature == 1 else logits * (1 / temperature)  # x * 1 == x: skip the op
    probs, ids = candidates(scores, candidate_count(sampler.top_k, scores.shape[-1]), top_p_floor(sampler.top_p),
                            min_p_cut(sampler.min_p))
    return draw(probs, ids, generator)
