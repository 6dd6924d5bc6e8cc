"""CPU speed options for the engine's decoder, and a meter of what they cost in accuracy.

`quantize_decoder(lm)` gives int8 dynamic quantisation of the decoder's Linear layers (weights int8,
activations quantised per call): on the CPU a decode step is bound by reading the weights, and int8
reads a quarter of fp32's bytes (docs/design.md §6: 34.2 vs 15.8 steps/s on the musicgen-small
architecture). bf16 needs nothing here: `load_model(..., dtype="bfloat16")`.

`logit_drift(lm_a, lm_b)` teacher-forces both models on the same token inputs (one seeded sampled
run of lm_a), so the paths never diverge and every step's logits are comparable.

torch 2.13 marks `torch.ao.quantization` deprecated (torchao is the successor) but still ships and
runs it; the warnings are silenced here, and `tests/test_quantize.py` fails loudly when it goes.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import decoder as decoder_fn
from .control import Controls
from .decoder import FastDecoder
from .errors import MusicsteerError
from .generator import Generator, fast_decoder
from .loading import LoadedModel
from .params import QUANTIZE

# "int8": per-output-channel weight scales (each row its own range: random and trained weights
# have rows of very different norms); "int8-tensor": one scale per matrix, torch's default.
MODES = QUANTIZE
DRIFT_PROMPT = "lo-fi jazz with warm piano"


def quantize_decoder(lm: LoadedModel, mode: str = "int8") -> LoadedModel:
    """A LoadedModel sharing every weight of `lm` whose engine decoder has int8 Linear layers.

    `lm` itself is untouched (its engine decoder and transformers' `generate` stay in its dtype),
    so the two can run side by side (`logit_drift`). CPU only: dynamic quantisation has no CUDA
    kernels.
    """
    if mode not in MODES:
        raise MusicsteerError(f"unknown quantisation mode {mode!r}; expected one of {', '.join(MODES)}")
    if lm.device.type != "cpu" or lm.dtype != torch.float32:
        raise MusicsteerError(f"int8 quantisation needs a float32 model on the CPU, not {lm.dtype} on {lm.device}")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if mode == "int8" else default_dynamic_qconfig
    dec = fast_decoder(lm)
    # A structural copy: new module containers over the same fp32 modules, whose Linear slots are
    # then replaced. The transformers model keeps its own Linear objects, hence its own numbers.
    qdec = _shallow(dec)
    qdec.layers = nn.ModuleList(_shallow(layer) for layer in dec.layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices, one per call
        for owner in (qdec, *qdec.layers):
            for name, child in list(owner.named_children()):
                if isinstance(child, nn.Linear):
                    # quantize_dynamic copies what it converts, so the shared fp32 Linear survives.
                    holder = quantize_dynamic(nn.Sequential(child), {nn.Linear: qconfig}, dtype=torch.qint8)
                    setattr(owner, name, holder[0])
    qdec.bind()  # forward calls the quantised modules from now on
    return _with_decoder(lm, qdec, f"{lm.name}+{mode}")


def _shallow(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # type: ignore[assignment]  # own slots, same children
    return clone


def _with_decoder(lm: LoadedModel, dec: FastDecoder, name: str) -> LoadedModel:
    """`lm` seen with another engine decoder: `fast_decoder` reads it from the model object, so
    the copy is a shallow model object (shared submodules, its own slot for the decoder)."""
    model = _shallow(lm.model)
    model._musicsteer_fast_decoder = dec
    return LoadedModel(model, lm.processor, name, lm.device, lm.dtype, lm.weights_id)


@dataclass(frozen=True)
class Drift:
    steps: int
    max_abs: float  # over raw logits, both CFG halves
    mean_abs: float
    logit_scale: float  # max |logit| of lm_a: max_abs / logit_scale is the relative error
    argmax_agree_pct: float  # per (step, codebook) on the guided logits: greedy's choice

    @property
    def rel_max(self) -> float:
        return self.max_abs / self.logit_scale


@torch.no_grad()
def logit_drift(lm_a: LoadedModel, lm_b: LoadedModel, steps: int = 100, prompt: str = DRIFT_PROMPT,
                seed: int = 0, guidance: float = 3.0) -> Drift:
    """Feed both models the token inputs of one seeded sampled run of `lm_a`; compare their logits."""
    inputs = _record_inputs(lm_a, steps, prompt, seed, guidance)
    a = _teacher_forced(lm_a, inputs, prompt)
    b = _teacher_forced(lm_b, inputs, prompt)
    diff = (a - b).abs()
    agree = _guided(a, guidance).argmax(-1) == _guided(b, guidance).argmax(-1)
    return Drift(steps, diff.max().item(), diff.mean().item(), a.abs().max().item(),
                 100.0 * agree.float().mean().item())


def _guided(logits: Tensor, guidance: float) -> Tensor:
    cond, uncond = logits.chunk(2, dim=1)  # (steps, 2B, K, V): halves on dim 1
    return uncond + (cond - uncond) * guidance


def _record_inputs(lm: LoadedModel, steps: int, prompt: str, seed: int, guidance: float) -> list[tuple[Tensor, Tensor]]:
    gen = Generator(lm, Controls(prompt=prompt, seed=seed, guidance=guidance))
    gen.start()
    inputs = []
    for _ in range(steps):
        tokens, positions = gen._inputs  # what this step decodes (the token buffer is reused: copy it)
        inputs.append((tokens.clone(), positions))
        gen.step()
    return inputs


def _teacher_forced(lm: LoadedModel, inputs: list[tuple[Tensor, Tensor]], prompt: str) -> Tensor:
    """Raw logits (steps, 2B, K, V) in float32 of `lm` on the given inputs, in a fresh session."""
    gen = Generator(lm, Controls(prompt=prompt))
    gen.start()  # encodes the prompt into the cross-attention cache
    out = []
    for tokens, positions in inputs:
        attend = int(positions[-1]) + 1
        logits = decoder_fn.forward(gen.dec, tokens, positions, gen.cache, gen.steering, attend)
        out.append(logits[:, :, -1].float())
    return torch.stack(out)
