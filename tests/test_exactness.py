"""The engine against transformers' generate: steering off and greedy, the codes must be identical
and every step's logits (both CFG halves) within 1e-4, on differently shaped random models."""

from __future__ import annotations

import pytest
import torch
from conftest import in_memory

from musicsteer.engine.control import Controls
from musicsteer.engine.decoder import FastDecoder
from musicsteer.engine.generator import Generator, render_codes

PROMPT = "classical piano with strings"
STEPS = 300


def generate_codes_and_logits(lm, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """transformers' own generate; its audio decode is wrapped (not replaced) to read the codes it decodes."""
    model = lm.model
    seen: list[torch.Tensor] = []
    decode = model.audio_encoder.decode

    def spy(codes, *args, **kwargs):
        seen.append(codes.clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    try:
        inputs = lm.processor(text=[PROMPT], padding=True, return_tensors="pt")
        out = model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=steps,
                             return_dict_in_generate=True, output_logits=True)
    finally:
        model.audio_encoder.decode = decode
    if lm.audio_channels == 2:  # stereo decodes left (::2) then right (1::2): re-interleave
        codes = torch.empty_like(torch.cat(seen, dim=2))
        codes[:, :, 0::2], codes[:, :, 1::2] = seen
    else:
        (codes,) = seen
    return codes[0, 0], [logits.view(2, lm.num_codebooks, -1) for logits in out.logits]


def keep_logits(gen: Generator) -> list[torch.Tensor]:
    """The list every later `gen.step()` appends its raw logits (2B, K, V) to."""
    logits: list[torch.Tensor] = []
    step = gen.step

    def step_and_keep_logits():
        frame = step()
        logits.append(gen.last_logits.clone())
        return frame

    gen.step = step_and_keep_logits
    return logits


def engine_codes_and_logits(lm, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = Generator(lm, Controls(prompt=PROMPT, top_k=1, guidance=3.0))
    logits = keep_logits(gen)
    codes = render_codes(gen, steps - gen.delay.max_delay)
    return codes, logits


SHAPES = {
    "mono-64x2": dict(stereo=False, hidden_size=64, num_layers=2, num_heads=4, ffn_dim=128),
    "mono-96x3-6heads": dict(stereo=False, hidden_size=96, num_layers=3, num_heads=6, ffn_dim=160, seed=1),
    "stereo-64x2": dict(stereo=True, hidden_size=64, num_layers=2, num_heads=4, ffn_dim=128, seed=2),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_matches_generate(shape: str) -> None:
    lm = in_memory(**SHAPES[shape])
    want_codes, want_logits = generate_codes_and_logits(lm, STEPS)
    got_codes, got_logits = engine_codes_and_logits(lm, STEPS)
    assert len(got_logits) == len(want_logits) == STEPS
    max_delay = lm.num_codebooks // lm.audio_channels - 1
    assert got_codes.shape == want_codes.shape == (lm.num_codebooks, STEPS - max_delay)
    worst = max((g - w).abs().max().item() for g, w in zip(got_logits, want_logits, strict=True))
    assert worst < 1e-4, f"logits drift {worst}"
    assert torch.equal(got_codes, want_codes)
    assert len(torch.unique(got_codes[0])) > 5  # a real sequence, not one repeated code


def test_sampling_is_reproducible_per_seed(tiny) -> None:
    def run(seed: int) -> torch.Tensor:
        return render_codes(Generator(tiny, Controls(prompt=PROMPT, seed=seed)), 60)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_fast_decoder_holds_everything_on_the_model_device() -> None:
    """A FastDecoder built from a model on another device keeps every tensor there (the meta
    device stands in for CUDA: a buffer left on the CPU would fail the first CUDA step)."""
    dec = FastDecoder(in_memory().model.to("meta"))
    assert {t.device.type for t in [*dec.buffers(), *dec.parameters()]} == {"meta"}
