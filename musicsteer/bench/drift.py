"""`musicsteer bench` with a speed option (`--dtype bfloat16|float16`, `--quantize int8|int8-tensor`):
what the option costs in accuracy, measured against float32 on the same weights in the same run.

The bench's contenders run on the optimised model; afterwards (so its cold starts stay cold) this
takes a float32 reference and reports `quantize.logit_drift` between the two:
  --quantize   the reference is the very model the int8 copy was made from (quantize_decoder
               shares every other weight and leaves the original untouched);
  --dtype      the reference is the same model loaded again in float32 (same files, or the seeded
               random:* build), checked parameter by parameter: each rounds to the optimised model's.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from musicsteer.engine.decoder import FastDecoder
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.loading import LoadedModel, dtype_name, load_model
from musicsteer.engine.quantize import DRIFT_PROMPT, logit_drift

REFERENCE_DTYPE = torch.float32


def option_name(lm: LoadedModel, quantize: str | None) -> str | None:
    """The speed option in use ("int8", "bfloat16", ...), or None for a plain float32 model."""
    if quantize is not None:
        return quantize
    return None if lm.dtype == REFERENCE_DTYPE else dtype_name(lm.dtype)


def float32_reference(lm: LoadedModel, base: LoadedModel) -> LoadedModel:
    """The float32 model with `lm`'s weights: `base` when `lm` is its int8 copy, else a fresh float32 load."""
    if base is not lm:
        return base
    reference = load_model(lm.name, str(lm.device), dtype_name(REFERENCE_DTYPE))
    check_same_weights(lm, reference)
    return reference


@torch.no_grad()
def check_same_weights(lm: LoadedModel, reference: LoadedModel) -> None:
    """Refuse a reference whose weights do not round to `lm`'s: the drift would measure other weights,
    not the option (a random:* build that stopped being reproducible, a checkpoint changed on disk)."""
    mine, theirs = _transformers_weights(lm), _transformers_weights(reference)
    dtype = dtype_name(lm.dtype)
    if mine.keys() != theirs.keys():
        raise MusicsteerError(f"float32 reference of {lm.name} has other parameters than the {dtype} model")
    for name, param in mine.items():
        if not torch.equal(param, theirs[name].to(param.dtype)):
            raise MusicsteerError(f"float32 reference of {lm.name} has other weights than the {dtype} model "
                                  f"({name}): no drift to report")


def _transformers_weights(lm: LoadedModel) -> dict[str, torch.Tensor]:
    # The engine's FastDecoder hangs off the model object once built (fused copies of the same weights):
    # skip it, or a model that has run would never match a fresh reference.
    return {f"{child_name}.{name}": param for child_name, child in lm.model.named_children()
            if not isinstance(child, FastDecoder) for name, param in child.named_parameters()}


def drift_section(lm: LoadedModel, base: LoadedModel, option: str, steps: int) -> dict[str, Any]:
    """The report's `drift`: float32 reference vs the optimised model, teacher-forced for `steps` tokens."""
    t0 = time.perf_counter()
    reference = float32_reference(lm, base)
    with torch.no_grad():
        drift = logit_drift(reference, lm, steps=steps)
    return {
        "option": option,
        "reference_dtype": dtype_name(REFERENCE_DTYPE),
        "reference": "the model the int8 copy was made from" if base is not lm
        else "the same model loaded again in float32, weights checked to round to the optimised ones",
        "steps": steps,
        "max_abs": drift.max_abs,
        "mean_abs": drift.mean_abs,
        "logit_scale": drift.logit_scale,
        "rel_max": drift.rel_max,
        "argmax_agree_pct": drift.argmax_agree_pct,
        "seconds": time.perf_counter() - t0,
        "note": f"teacher-forced: both models decode the token inputs of one seeded sampled run of the float32 "
                f"reference (prompt {DRIFT_PROMPT!r}, CFG 3), so they never diverge; max_abs/mean_abs over the raw "
                "logits of both CFG halves; rel_max = max_abs / logit_scale (max |float32 logit|); "
                "argmax_agree_pct per (step, codebook) on the guided logits: greedy's choice",
    }


def hf_generate_note(option: str, quantize: str | None) -> str:
    """What precision transformers' generate ran in: the option reaches it only through the dtype."""
    if quantize is not None:
        return (f"hf_generate stays float32 under --quantize {quantize}: quantize_decoder converts only the "
                "engine's decoder, transformers' modules keep their float32 Linear layers")
    return f"hf_generate runs in {option} too (the transformers model itself was loaded in {option})"


def annotate(report: dict[str, Any], option: str, quantize: str | None, quantize_s: float) -> None:
    """Say in the report which precision each contender ran in, and what quantisation cost up front."""
    note = hf_generate_note(option, quantize)
    report["speed_option"] = {"option": option, "hf_generate": note}
    for result in report["results"]:
        if result["name"] == "hf_generate":
            result["extra"]["note"] += f"; {note}"
    if quantize is not None:
        report["speed_option"]["quantize_s"] = quantize_s
        # The quantised decoder exists before the bench starts: its cold sessions find it built.
        report["cold_start"]["note"] += (f"; --quantize {quantize}: the FastDecoder (float32, then quantised) "
                                         "was built before the bench, in quantize_s, so fast_decoder_build_s ~0")


def summary(report: dict[str, Any]) -> list[str]:
    """Terminal lines for the speed option and its drift (none without an option)."""
    lines = []
    option = report.get("speed_option")
    if option:
        lines.append(option["hf_generate"])
        if "quantize_s" in option:
            lines.append(f"quantisation (before the bench): {option['quantize_s'] * 1000:.0f} ms")
    drift = report.get("drift")
    if drift:
        lines.append(f"drift {drift['option']} vs {drift['reference_dtype']} ({drift['steps']} teacher-forced steps): "
                     f"max |dlogit| {drift['max_abs']:.4g} ({100 * drift['rel_max']:.2f} % of the logit scale "
                     f"{drift['logit_scale']:.3g}), mean {drift['mean_abs']:.3g}, "
                     f"argmax agreement {drift['argmax_agree_pct']:.1f} %")
    return lines
