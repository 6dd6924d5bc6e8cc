"""CPU speed options (engine/quantize.py): int8 runs, leaves the original model alone, and its
logit drift, and bf16's, stay within stated bounds on the tiny model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator, fast_decoder, render_codes
from musicsteer.engine.graph import GraphGenerator
from musicsteer.engine.loading import load_model
from musicsteer.engine.quantize import logit_drift, quantize_decoder

PROMPT = "lo-fi jazz with warm piano"
# Measured on tiny, 100 teacher-forced steps (400 decisions per model): int8 per-channel max |diff|
# 1.2 % of the largest logit, argmax agreement 96 %; per-tensor 1.4 %, 94 %; bf16 0.7 %, 94 %.
# Tiny's logits are nearly flat (max |logit| ~0.8), so near-ties make agreement the loose figure.
# Bounds with margin; a wrong kernel or a lost weight lands far outside them (see the last test).
REL_MAX = {"int8": 0.05, "int8-tensor": 0.05, "bf16": 0.03}
MIN_AGREE_PCT = 85.0
DQ_LINEAR = torch.ao.nn.quantized.dynamic.Linear


def greedy_logits(lm, steps: int = 30) -> torch.Tensor:
    gen = Generator(lm, Controls(prompt=PROMPT, top_k=1))
    gen.start()
    out = []
    for _ in range(steps):
        gen.step()
        out.append(gen.last_logits.clone())
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["int8", "int8-tensor"])
def test_int8_runs_and_leaves_the_original_alone(tiny, mode: str) -> None:
    before = greedy_logits(tiny)
    q = quantize_decoder(tiny, mode)
    dec, qdec = fast_decoder(tiny), fast_decoder(q)
    assert qdec is not dec
    linear_slots = [(owner, name) for owner in (dec, *dec.layers) for name, m in owner.named_children()
                    if isinstance(m, nn.Linear)]
    assert len(linear_slots) == 1 + 1 + 8 * dec.num_layers  # lm_head, text projection, 8 per layer
    for owner, name in linear_slots:
        assert isinstance(getattr(owner, name), nn.Linear)  # the original keeps fp32 modules
    assert isinstance(qdec.lm_head, DQ_LINEAR) and all(isinstance(layer.wqkv, DQ_LINEAR) for layer in qdec.layers)
    assert isinstance(tiny.model.decoder.lm_heads[0], nn.Linear)  # transformers' generate untouched
    assert torch.equal(greedy_logits(tiny), before)
    # The int8 model generates through both the eager and the static path, identically (greedy:
    # activations are quantised per call, so the ~1e-7 gap between the two attention layouts can
    # cross a rounding step and move a sampled draw that sits on a boundary; an argmax needs a tie).
    greedy = Controls(prompt=PROMPT, top_k=1)
    codes = render_codes(Generator(q, greedy), 60)
    assert torch.equal(codes, render_codes(GraphGenerator(q, greedy, capture=False), 60))
    sampled = render_codes(Generator(q, Controls(prompt=PROMPT, seed=3)), 60)
    assert len(torch.unique(sampled[0])) > 20


@pytest.mark.parametrize("mode", ["int8", "int8-tensor", "bf16"])
def test_logit_drift_within_bound(tiny, mode: str) -> None:
    other = load_model("tiny", "cpu", "bfloat16") if mode == "bf16" else quantize_decoder(tiny, mode)
    drift = logit_drift(tiny, other, steps=100)
    print(f"{mode}: {drift}, rel {drift.rel_max:.4f}")
    assert 0 < drift.rel_max < REL_MAX[mode]
    assert drift.mean_abs < drift.max_abs
    assert drift.argmax_agree_pct >= MIN_AGREE_PCT


def test_drift_meter_is_exact_on_itself_and_sees_a_real_change(tiny) -> None:
    same = logit_drift(tiny, tiny, steps=20)
    assert same.max_abs == 0 and same.argmax_agree_pct == 100
    q = quantize_decoder(tiny)
    head = fast_decoder(q).lm_head  # a wrong kernel: the output projection's weights scrambled
    fast_decoder(q).lm_head = nn.Linear(head.in_features, head.out_features, bias=False)
    fast_decoder(q).bind()
    assert logit_drift(tiny, q, steps=20).rel_max > 5 * REL_MAX["int8"]


def test_refusals(tiny) -> None:
    with pytest.raises(MusicsteerError, match="unknown quantisation mode"):
        quantize_decoder(tiny, "int4")
    with pytest.raises(MusicsteerError, match="float32 model on the CPU"):
        quantize_decoder(load_model("tiny", "cpu", "bfloat16"))


def test_an_int8_model_states_its_facts_like_its_original(tiny) -> None:
    """`ModelFacts` (what a --ray driver compares across actors) of an int8 model: its state dict holds
    dtypes and packed tuples, which once made `eval --quantize int8` fail; the weights digest is the
    checkpoint's, whatever the engine has cached on the model."""
    before = tiny.facts
    facts = quantize_decoder(tiny, "int8").facts
    assert facts.weights_digest == before.weights_digest == tiny.facts.weights_digest
    assert facts.fingerprint != before.fingerprint  # the name says int8
