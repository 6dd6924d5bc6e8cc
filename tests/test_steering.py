"""Steering semantics, checked on the activations the engine itself computes (tiny model, greedy)."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import random_vectors

from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Applied, Change
from musicsteer.engine.generator import Generator
from musicsteer.engine.steering import SteeringTensors, Term

PROMPT = "jazz trio"
GREEDY = dict(prompt=PROMPT, top_k=1)


def run_steps(gen: Generator, steps: int, capture_at: int | None = None,
              terms: list[Term] | None = None) -> tuple[list[torch.Tensor], dict]:
    """Step `gen`; return every step's raw logits and the activations captured at step `capture_at`.
    `terms`: steering terms set by hand after start (which sets the controls' own)."""
    logits, captured = [], {}
    gen.start()
    if terms is not None:
        gen.steering.set_terms(terms)
    for step in range(steps):
        gen.capture = {} if step == capture_at else None
        gen.step()
        logits.append(gen.last_logits.clone())
        if step == capture_at:
            captured = {name: t.clone() for name, t in gen.capture.items()}
    return logits, captured


def by_hand(h: torch.Tensor, alpha: float, v: torch.Tensor, rule: str = "renorm") -> torch.Tensor:
    h, v = h.double(), v.double()
    if rule == "add":
        return h + alpha * v
    return (h + alpha * h.norm(dim=-1, keepdim=True) * v) / (1 + alpha)


def test_alpha_zero_is_bit_identical_to_no_steering(tiny) -> None:
    vectors = random_vectors(tiny)
    plain, _ = run_steps(Generator(tiny, Controls(**GREEDY)), 40)
    zero, _ = run_steps(Generator(tiny, Controls(**GREEDY, mix={"rock": 1.0}, alpha=0.0), vectors), 40)
    # alpha 0 scheduled as an explicit term too (not just "no terms"): still exact
    gen = Generator(tiny, Controls(**GREEDY, mix={"rock": 1.0}, alpha=0.7), vectors)
    explicit, _ = run_steps(gen, 40, terms=[Term(t.site, t.layer, t.direction, 0.0) for t in gen.control.terms()])
    for a, b, c in zip(plain, zero, explicit, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("site", ["residual", "attention"])
@pytest.mark.parametrize("rule", ["renorm", "add"])
def test_change_at_step_k_follows_the_rule_and_leaves_earlier_steps(tiny, site: str, rule: str) -> None:
    vectors = random_vectors(tiny)
    layer, k, alpha = 1, 12, 0.6
    base, seen = run_steps(Generator(tiny, Controls(**GREEDY), vectors, steer_rule=rule), 30, capture_at=k)
    # slew 0: the rule at step k, so the jump lands whole in one token (the default glides it over 50 ms)
    gen = Generator(tiny, Controls(**GREEDY, mix={"jazz": 1.0}, alpha=0.0, layers=(layer,), site=site), vectors,
                    steer_rule=rule, slew=0)
    gen.control.submit(Change("alpha", alpha), at_step=k)
    steered, got = run_steps(gen, 30, capture_at=k)

    for step in range(k):
        assert torch.equal(base[step], steered[step]), f"step {step} before the change moved"
    assert not torch.equal(base[k], steered[k])
    assert any(not torch.equal(a, b) for a, b in zip(base[k + 1 :], steered[k + 1 :], strict=True))

    name = f"{site}.{layer}"
    before, after = seen[name], got[name]
    want = by_hand(before[:1], alpha, vectors.direction("jazz", layer), rule)
    torch.testing.assert_close(after[:1].double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(after[1:], before[1:]), "the unconditional half must be untouched by default"
    # layers before the steered one see exactly the same activations
    for earlier in range(layer):
        assert torch.equal(got[f"residual.{earlier}"], seen[f"residual.{earlier}"])


def test_steer_both_steers_the_unconditional_half_too(tiny) -> None:
    vectors = random_vectors(tiny)
    _, seen = run_steps(Generator(tiny, Controls(**GREEDY), vectors), 6, capture_at=5)
    # slew 0: the rule at step 5 on both halves, so the jump lands whole in one token (the default glides it)
    gen = Generator(tiny, Controls(**GREEDY, mix={"rock": 1.0}, alpha=0.0, layers=(1,)), vectors, steer_both=True,
                    slew=0)
    gen.control.submit(Change("alpha", 0.5), at_step=5)
    _, got = run_steps(gen, 6, capture_at=5)
    want = by_hand(seen["residual.1"], 0.5, vectors.direction("rock", 1))
    torch.testing.assert_close(got["residual.1"].double(), want, rtol=1e-5, atol=1e-5)


def test_mix_and_several_layers(tiny) -> None:
    vectors = random_vectors(tiny)
    mix = {"rock": 0.5, "classical": -0.25}
    gen = Generator(tiny, Controls(**GREEDY, mix=mix, alpha=0.4, layers=(0, 1)), vectors)
    gen.start()
    gen.step()
    for layer in (0, 1):
        v = sum(w * vectors.direction(n, layer) for n, w in mix.items())
        torch.testing.assert_close(gen.steering.direction["residual"][layer], v / v.norm())
        assert gen.steering.alpha["residual"][layer].item() == pytest.approx(0.4)
    assert gen.steering.active["residual"] == frozenset({0, 1})


def test_glides_reach_their_target_in_the_given_time(tiny) -> None:
    vectors = random_vectors(tiny)
    gen = Generator(tiny, Controls(**GREEDY, mix={"rock": 1.0}, alpha=0.0), vectors)
    gen.control.submit(Change("alpha", 1.0, seconds=0.2), at_step=2)  # 10 steps at 50 steps/s
    gen.control.submit(Change("mix", {"jazz": 1.0}, seconds=0.1), at_step=4)
    gen.start()
    alphas = []
    for _ in range(16):
        gen.step()
        alphas.append(gen.control.values.alpha)
    assert alphas[:2] == [0.0, 0.0]
    assert alphas[2] == pytest.approx(0.1) and alphas[6] == pytest.approx(0.5) and alphas[11:] == [1.0] * 5
    assert gen.control.values.mix == {"jazz": 1.0}
    torch.testing.assert_close(gen.steering.direction["residual"][vectors.best_layer],
                               vectors.direction("jazz", vectors.best_layer))


def test_change_from_another_thread_lands_at_the_next_token(tiny) -> None:
    vectors = random_vectors(tiny)
    # slew 0: the change's arrival at the next token, not the glide the default slew gives a jump
    gen = Generator(tiny, Controls(**GREEDY, mix={"rock": 1.0}, alpha=0.1), vectors, slew=0)
    applied: list[Applied] = []
    gen.listeners.add(applied.append)
    gen.start()
    for _ in range(5):
        gen.step()
    sent_at = gen.step_index
    sender = threading.Thread(target=gen.control.submit, args=(Change("alpha", 0.9),))
    sender.start()
    sender.join()
    gen.step()
    assert applied == [Applied(sent_at, (Change("alpha", 0.9),))]
    assert gen.steering.alpha["residual"][vectors.best_layer].item() == pytest.approx(0.9)


def test_bad_changes_are_refused_and_never_queued(tiny) -> None:
    from musicsteer.engine.errors import MusicsteerError

    gen = Generator(tiny, Controls(**GREEDY), random_vectors(tiny))
    for bad in (Change("mix", {"polka": 1.0}), Change("alpha", float("nan")), Change("alpha", -1.0),
                Change("site", "mlp"), Change("top_k", 2.5), Change("volume", 1.0)):
        with pytest.raises(MusicsteerError) as err:
            gen.control.submit(bad)
        assert "\n" not in str(err.value)
    gen.start()
    assert gen.control.apply_due(0).changes == []
    assert gen.control.counts == {"unknown_name": 2, "non_finite": 1, "out_of_range": 1, "bad_type": 2}
    assert gen.control.submit(Change("layer", 99)).value == (gen.dec.num_layers - 1,)  # live: clamped to the model
    assert gen.control.counts["clamped"] == 1


@pytest.mark.parametrize("rule", ["renorm", "add"])
def test_incremental_updates_equal_a_fresh_table(rule: str) -> None:
    """set_terms rewrites only the rows a change touches: after any sequence of changes the table
    equals the one a fresh SteeringTensors builds for the last terms, and a refused change leaves
    it as it was."""
    layers, width = 6, 16
    gen = torch.Generator().manual_seed(0)

    def term(site: str, layer: int, alpha: float) -> Term:
        v = torch.randn(width, generator=gen)
        return Term(site, layer, v / v.norm(), alpha)

    live = SteeringTensors(layers, width, 1, torch.device("cpu"), rule)
    sequence = [[term("residual", 1, 0.5)], [term("residual", 1, 0.7), term("attention", 4, 0.2)],
                [term("residual", 3, 0.4)], [], [term("attention", 0, 0.9), term("residual", 5, 0.1)]]
    for terms in sequence:
        live.set_terms(terms)
        fresh = SteeringTensors(layers, width, 1, torch.device("cpu"), rule)
        fresh.set_terms(terms)
        assert torch.equal(live.table, fresh.table)
        assert live.active == fresh.active
    before = live.table.clone()
    with pytest.raises(MusicsteerError, match="two terms"):
        live.set_terms([term("residual", 2, 0.3), term("residual", 2, 0.4)])
    assert torch.equal(live.table, before)
    # What the table holds is the rule's own numbers: alpha, and keep = 1 / (1 + alpha) for renorm.
    assert live.alpha["attention"][0].item() == pytest.approx(0.9)
    assert live.keep["attention"][0].item() == pytest.approx(1 / 1.9 if rule == "renorm" else 1.0)


def test_renorm_refuses_alpha_at_or_below_minus_one(tiny) -> None:
    """renorm divides by 1 + alpha: alpha <= -1 is refused when submitted (a live session keeps
    running), and refused by the tensors themselves without touching what they hold."""
    vectors = random_vectors(tiny)
    gen = Generator(tiny, Controls(prompt=PROMPT, mix={"rock": 1.0}, alpha=0.3), vectors)
    with pytest.raises(MusicsteerError, match="above -1 with the renorm rule"):
        gen.control.submit(Change("alpha", -1.0))
    gen.control.submit(Change("alpha", -0.5))  # allowed: steers away
    add = Generator(tiny, Controls(prompt=PROMPT, mix={"rock": 1.0}, alpha=0.3), vectors, steer_rule="add")
    add.control.submit(Change("alpha", -2.0))
    steering = SteeringTensors(4, 8, 1, torch.device("cpu"))
    v = torch.nn.functional.normalize(torch.ones(8), dim=0)
    steering.set_terms([Term("residual", 1, v, 0.3)])
    before = steering.table.clone()
    with pytest.raises(MusicsteerError, match="above -1"):
        steering.set_terms([Term("residual", 1, v, 0.5), Term("residual", 2, v, -1.0)])
    assert torch.equal(steering.table, before) and steering.active["residual"] == {1}
