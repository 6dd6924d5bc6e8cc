"""Min-p sampling: one row of the parameter table, its cut in the sampler, its 0-d buffer in the captured
step; the same draws on both paths, transformers' distribution, live and replayed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from musicsteer.cli import main
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Change
from musicsteer.engine.generator import Generator, render_codes
from musicsteer.engine.graph import GraphGenerator
from musicsteer.engine.sampling import Sampler, sample_tokens
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log

PROMPT = "lofi"


@pytest.mark.parametrize("knobs", [dict(min_p=0.1), dict(min_p=0.3, temperature=0.7),
                                   dict(top_k=20, top_p=0.9, min_p=0.2, temperature=1.5)])
def test_draws_follow_transformers_warpers_in_their_order(knobs: dict) -> None:
    """Temperature, top-k, top-p, then min-p, as transformers chains its warpers: the frequencies of
    40,000 draws match the distribution the chain leaves, and no token it removed is ever drawn."""
    sampler = Sampler(**{"top_k": 0, **knobs})
    logits = 2 * torch.randn(1, 60, generator=torch.Generator().manual_seed(4))
    reference = TemperatureLogitsWarper(sampler.temperature)(None, logits.clone())
    if sampler.top_k:
        reference = TopKLogitsWarper(sampler.top_k)(None, reference)
    if sampler.top_p:
        reference = TopPLogitsWarper(sampler.top_p)(None, reference)
    reference = MinPLogitsWarper(sampler.min_p)(None, reference)
    want = reference.softmax(-1)[0]
    draws = sample_tokens(logits.expand(40000, -1), sampler, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=60).float() / draws.numel()
    assert set(draws.unique().tolist()) <= set(torch.nonzero(want).flatten().tolist())
    assert (freq - want).abs().max().item() < 0.012
    # Not vacuous: min-p removed candidates the rest of the chain kept.
    without = Sampler(**{**vars(sampler), "min_p": 0.0})
    assert len(draws.unique()) < len(sample_tokens(logits.expand(40000, -1), without, torch.Generator()).unique())


def test_min_p_off_draws_exactly_what_no_min_p_draws() -> None:
    logits = 3 * torch.randn(4, 2048, generator=torch.Generator().manual_seed(2))
    for seed in range(10):
        a = sample_tokens(logits, Sampler(min_p=0.0), torch.Generator().manual_seed(seed))
        b = sample_tokens(logits, Sampler(), torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_graph_codes_equal_eager_with_min_p_moved_live(tiny) -> None:
    """Seeded, min-p on from the start and moved mid-run (off, on again): the captured step's function
    (run uncaptured on the CPU) gives the eager codes, and its 0-d buffer holds the value. (The tiny
    model's distribution is nearly flat: a cut changes its music only from about 0.5 of the top token.)"""
    controls = Controls(prompt=PROMPT, seed=5, top_k=0, min_p=0.6)
    script = [(40, Change("min_p", 0.9)), (80, Change("min_p", 0.0)), (110, Change("min_p", 0.75))]
    codes = {}
    for name, cls in (("eager", Generator), ("graph", GraphGenerator)):
        gen = cls(tiny, controls)
        for step, change in script:
            gen.control.submit(change, at_step=step)
        codes[name] = render_codes(gen, 150)
        if name == "graph":
            assert gen.graph.min_p_on and gen.graph.min_p.item() == pytest.approx(0.75)
            assert gen.graph.sampler.min_p == 0.75
    assert torch.equal(codes["graph"], codes["eager"])
    plain = render_codes(Generator(tiny, Controls(prompt=PROMPT, seed=5, top_k=0)), 150)
    assert not torch.equal(plain, codes["eager"])  # min-p changed the music


def test_a_take_with_min_p_changed_mid_take_replays_to_the_same_codes(tiny, tmp_path) -> None:
    gen = Generator(tiny, Controls(prompt=PROMPT, seed=11, top_k=0, min_p=0.6))
    for step, change in [(20, Change("min_p", 0.9)), (60, Change("min_p", 0.0)), (75, Change("min_p", 0.7))]:
        gen.control.submit(change, at_step=step)
    session = StreamingSession(gen, StreamOptions(seconds=2.0, output_device="null", record=tmp_path / "take.wav"),
                               keep_codes=True)
    session.run()
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    log = read_log(tmp_path / "take.jsonl")
    assert log.header["controls"]["min_p"] == 0.6
    assert [(c.param, c.value) for _, c in log.changes] == [("min_p", 0.9), ("min_p", 0.0), ("min_p", 0.7)]
    out = tmp_path / "replayed.npy"
    assert main(["render", "--replay", str(tmp_path / "take.jsonl"), "--device", "cpu",
                 "--out", str(tmp_path / "replayed.wav"), "--codes-out", str(out)]) == 0
    assert np.array_equal(np.load(out), live[:, : log.end["frames"]])
    plain = render_codes(Generator(tiny, Controls(prompt=PROMPT, seed=11, top_k=0)), live.shape[-1])
    assert not np.array_equal(plain.numpy(), live)  # min-p changed the music
