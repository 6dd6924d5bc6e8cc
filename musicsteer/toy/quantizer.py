"""Training transformers' EnCodec residual vector quantizer in place (transformers' own is inference-only).

The codebooks are the buffers transformers' `EncodecEuclideanCodebook` already has, updated as EnCodec's
training did (audiocraft's core_vq), so `save_pretrained` writes the trained quantizer exactly and
`EncodecModel.encode` picks the same codes training did (the nearest codeword, level by level):

* `embed` (K, D): the codewords; `embed_avg` (K, D): an exponential moving average (EMA) of the sum of the
  frames each code was picked for; `cluster_size` (K,): the EMA of how often it was picked (frames per step).
  After each step embed = embed_avg / cluster_size, Laplace-smoothed so that no count is zero. No gradient
  moves the codebooks; the encoder is pulled towards them by a commitment loss.
* init: k-means over encoder frames (level 0) and residuals (level k) of a pool of training audio.
* dead codes: a code not picked for `dead_after` steps is replaced by a random frame of the current batch at
  its level (cluster_size set to the mean, embed_avg to match, so the EMA keeps it). Measured on the first
  steps of a 2.6 M codec: the encoder's output has a common offset ten times its spread (0.34 vs 0.034) and
  the offset moves 2.1 in 12 steps, so the frames leave the k-means codewords together and every frame
  picks one code (level-0 perplexity 168 -> 1 in 4 steps). audiocraft's cure is replacing codes whose EMA
  count is under 2 frames, which on its batches of thousands of frames a step re-seeds stale codes within
  a few steps; a CPU batch of ~400 frames over 2048 codes uses a code 0.2 times a step on average, so here
  the criterion is idle steps (a code not picked in the time a live one is expected to be picked ~4 times).
* the decoder gets the quantized latents with the straight-through estimator over the whole residual sum
  (emb + (q - emb).detach(): EnCodec's fix for the per-level estimator's bias, facebookresearch/encodec#25).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ..engine.tiny import _kmeans, _nearest


def codebooks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The `EncodecEuclideanCodebook` of each residual level of an EncodecModel, level 0 first."""
    return [layer.codebook for layer in model.quantizer.layers]


@torch.no_grad()
def init_codebooks(model: torch.nn.Module, frames: Tensor, frames_per_step: int, generator: torch.Generator,
                   iters: int = 10) -> None:
    """k-means codebooks from `frames` (N, D) of encoder output, N >= codebook size; residual by residual.

    cluster_size starts at the mean use per step (frames_per_step / K) for every code, embed_avg to match."""
    residual = frames.float()
    for book in codebooks(model):
        size = book.codebook_size
        if len(residual) < size:
            raise ValueError(f"k-means init needs at least {size} frames, got {len(residual)}")
        centroids = _kmeans(residual, size, iters, generator)
        mean_use = frames_per_step / size
        book.embed.copy_(centroids)
        book.embed_avg.copy_(centroids * mean_use)
        book.cluster_size.fill_(mean_use)
        book.inited.fill_(1.0)
        residual = residual - centroids[_nearest(residual, centroids)]


@torch.no_grad()
def shift_codebook(model: torch.nn.Module, shift: Tensor) -> None:
    """Move level 0's codewords by `shift` (D,), embed_avg with them: the encoder's frames moved so between steps."""
    book = codebooks(model)[0]
    book.embed.add_(shift)
    book.embed_avg.add_(book.cluster_size[:, None] * shift)


def dead_after_steps(codebook_size: int, frames_per_step: int, expected_uses: float = 4.0) -> int:
    """Idle steps after which a code counts as dead: the time in which a code of average use is picked
    `expected_uses` times (21 steps for 2048 codes and 400 frames a step)."""
    return max(1, math.ceil(expected_uses * codebook_size / frames_per_step))


def quantize(model: torch.nn.Module, emb: Tensor, *, update: bool, step: int = 0, last_used: Tensor | None = None,
             dead_after: int = 0, generator: torch.Generator | None = None, decay: float = 0.99,
             epsilon: float = 1e-5) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    """Quantize encoder output `emb` (B, D, T) with every level of the RVQ.

    Returns (quantized (B, D, T) with the straight-through gradient to `emb`, codes (B, levels, T) long,
    commitment loss (mean over levels of the MSE between each level's input and its codeword; its gradient
    reaches the encoder), stats {"dead": codes replaced this step, "perplexity_0": level 0's code-use
    perplexity in this batch}). With `update`, the codebooks take one EMA step, `last_used` (levels, K) long
    records `step` for every code picked, and codes idle for more than `dead_after` steps are replaced (from
    `generator`'s draws)."""
    batch, dim, time = emb.shape
    residual = emb.permute(0, 2, 1).reshape(-1, dim)  # (B*T, D)
    total = torch.zeros_like(residual)
    commit = emb.new_zeros(())
    codes, dead = [], 0
    perplexity = 0.0
    books = codebooks(model)
    for level, book in enumerate(books):
        with torch.no_grad():
            index = _nearest(residual.detach().float(), book.embed)
            chosen = book.embed[index]
        commit = commit + F.mse_loss(residual, chosen)
        if level == 0:
            perplexity = _perplexity(index, book.codebook_size)
        if update:
            _ema_update(book, residual.detach(), index, decay, epsilon)
            last_used[level, index] = step
            dead += _replace_dead(book, residual.detach(), last_used[level], step, dead_after, generator)
        codes.append(index.view(batch, time))
        total = total + chosen
        residual = residual - chosen
    quantized = total.view(batch, time, dim).permute(0, 2, 1)
    quantized = emb + (quantized - emb).detach()
    stats = {"dead": float(dead), "perplexity_0": perplexity}
    return quantized, torch.stack(codes, dim=1), commit / len(books), stats


@torch.no_grad()
def _ema_update(book: torch.nn.Module, frames: Tensor, index: Tensor, decay: float, epsilon: float) -> None:
    size = book.codebook_size
    counts = torch.bincount(index, minlength=size).to(frames.dtype)
    sums = torch.zeros_like(book.embed).index_add_(0, index, frames)
    book.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    book.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
    total = book.cluster_size.sum()
    smoothed = (book.cluster_size + epsilon) / (total + size * epsilon) * total
    book.embed.copy_(book.embed_avg / smoothed[:, None])


@torch.no_grad()
def _replace_dead(book: torch.nn.Module, frames: Tensor, last_used: Tensor, step: int, dead_after: int,
                  generator: torch.Generator | None) -> int:
    """Re-seed every code not picked in the last `dead_after` steps with a random frame; returns how many."""
    dead = torch.nonzero(last_used < step - dead_after).flatten()
    if len(dead):
        mean_use = book.cluster_size.sum() / book.codebook_size
        pick = frames[torch.randint(len(frames), (len(dead),), generator=generator)]
        book.embed[dead] = pick
        book.embed_avg[dead] = pick * mean_use
        book.cluster_size[dead] = mean_use
        last_used[dead] = step  # a new code has `dead_after` steps to be picked
    return len(dead)


def _perplexity(index: Tensor, size: int) -> float:
    """exp(entropy) of the codes' use in `index`: how many codes are in effective use (1 .. size)."""
    p = torch.bincount(index, minlength=size).float()
    p = p / p.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
