"""The static decode step (engine/graph.py) against the eager Generator, on the CPU.

On the CPU the static function runs eagerly (capture=False), so these tests check the numerics of
exactly what CUDA captures: attention over the whole preallocated cache with a position mask,
every steering slot computed, the CFG mix and the tensor-knob sampler. `builds` counts what CUDA
would capture.

The graph-vs-eager tests (those on `tiny`) run on MUSICSTEER_TEST_DEVICE (default cpu); scripts/gpu-check
runs them with cuda, where the static step is captured and replayed (capture=CAPTURE).
"""

from __future__ import annotations

import argparse
import os
import warnings

import pytest
import torch
from conftest import in_memory, one_line_error, random_vectors
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from musicsteer.bench.knobs import automate_steering
from musicsteer.commands.setup import generator_class
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Applied, Change, MeterReading, Notice
from musicsteer.engine.generator import Generator
from musicsteer.engine.graph import GENERATORS, GraphDecoder, GraphGenerator, decode_step
from musicsteer.engine.loading import LoadedModel, load_model
from musicsteer.engine.meter import GenreMeter
from musicsteer.engine.sampling import Sampler, draw, sample_tokens
from musicsteer.engine.steering import SteeringTensors

# The device the graph-vs-eager tests run on: cpu here; scripts/gpu-check sets cuda. On cuda the static step
# is captured (capture None: captured on CUDA); on the CPU it runs uncaptured (capture False).
DEVICE = os.environ.get("MUSICSTEER_TEST_DEVICE", "cpu")
CAPTURE = False if DEVICE == "cpu" else None
# Static vs eager logits: the two attention layouts differ by ~1e-7 on the CPU; CUDA's kernels by more.
LOGITS_TOL, METER_TOL = (1e-5, 1.5e-4) if DEVICE == "cpu" else (1e-4, 1e-3)
PROMPT = "jazz trio with piano"
# The same steering automation for every run, the one `musicsteer bench` drives too: alpha moves
# every token, the mix every 5th, the layer every 7th and the site every 11th, all in-place writes.
MIX = [{"rock": 1.0}, {"rock": 0.5, "jazz": 0.5}, {"jazz": 1.0, "classical": 0.3}]


@pytest.fixture(scope="module")
def tiny(tiny: LoadedModel) -> LoadedModel:
    """conftest's `tiny`, on DEVICE."""
    return tiny if DEVICE == "cpu" else load_model("tiny", DEVICE, "float32")


def automate(gen: Generator, steps: int) -> None:
    automate_steering(gen, steps, mixes=MIX)


def run(gen: Generator, steps: int, inputs: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `gen`; return (codes (K, frames), raw logits (steps, 2, K, V)). `inputs` teacher-forces."""
    gen.start()
    logits = []
    for i in range(steps):
        if inputs is not None:
            gen._inputs = inputs[i]
        gen.step()
        logits.append(gen.last_logits.clone())
    frames = steps - 1 - gen.delay.max_delay
    return gen.delay.codes[0, :, :frames].clone(), torch.stack(logits)


def run_captured(lm, controls: Controls, steps: int = 60) -> tuple[torch.Tensor, torch.Tensor, GraphGenerator, list]:
    """The static step made to capture at its first step, as on CUDA (its capture mocked by the caller), against
    eager: (its codes, eager's codes, the generator, the Notices it raised)."""
    want, _ = run(Generator(lm, controls), steps)
    gen = GraphGenerator(lm, controls, capture=False)
    gen.graph.capture = True
    notices = []
    gen.listeners.add(lambda event: notices.append(event) if isinstance(event, Notice) else None)
    got, _ = run(gen, steps)
    return got, want, gen, notices


def test_static_path_equals_eager_greedy_with_steering_moving_every_token(tiny) -> None:
    vectors, steps = random_vectors(tiny), 240
    controls = Controls(prompt=PROMPT, top_k=1, mix={"rock": 1.0}, alpha=0.3)
    eager, static = Generator(tiny, controls, vectors), GraphGenerator(tiny, controls, vectors, capture=CAPTURE)
    automate(eager, steps)
    automate(static, steps)
    want_codes, want_logits = run(eager, steps)
    got_codes, got_logits = run(static, steps)
    assert static.graph.steps == steps  # no audio prompt: no multi-token prefill, every step is static
    assert (got_logits - want_logits).abs().max().item() < LOGITS_TOL
    assert torch.equal(got_codes, want_codes)
    # Not vacuous: the steering changed the music, and the music is not one repeated code.
    plain_codes, _ = run(Generator(tiny, Controls(prompt=PROMPT, top_k=1)), steps)
    assert not torch.equal(plain_codes, want_codes)
    assert len(torch.unique(want_codes[0])) > 5


KNOBS = [dict(), dict(temperature=0.7, top_k=40, top_p=0.9), dict(top_k=0, top_p=0.8), dict(top_p=0.5), dict(top_k=0),
         dict(temperature=1.3, top_k=2), dict(top_k=1), dict(temperature=0.0), dict(min_p=0.1),
         dict(temperature=1.3, top_k=0, top_p=0.9, min_p=0.05), dict(top_k=1, min_p=0.3)]


@pytest.mark.parametrize("knobs", KNOBS)
def test_tensor_knob_sampler_draws_what_sample_tokens_draws(tiny, knobs: dict) -> None:
    """On the same logits and generator state both samplers pick the same tokens and leave the
    generator in the same state (greedy draws nothing in either)."""
    sampler = Sampler(**knobs)
    gen = GraphGenerator(tiny, Controls(prompt=PROMPT), capture=False)
    graph = gen.graph
    graph.set_sampling(sampler)
    noise = torch.Generator().manual_seed(1)
    for seed in range(40):
        mixed = 4 * torch.randn(1, tiny.num_codebooks, graph.vocab, generator=noise)
        graph.rng.manual_seed(seed)
        got = graph._sample(mixed)
        after = graph.rng.get_state()
        eager_rng = torch.Generator().manual_seed(seed)
        want = sample_tokens(mixed, sampler, eager_rng)
        assert torch.equal(got, want)
        assert torch.equal(after, eager_rng.get_state())
        untouched = torch.equal(after, torch.Generator().manual_seed(seed).get_state())
        assert untouched == (sampler.top_k == 1 or sampler.temperature <= 0)


@pytest.mark.parametrize("knobs", [dict(), dict(temperature=0.7, top_k=40), dict(top_k=0, top_p=0.8),
                                   dict(top_k=0, min_p=0.05)])
def test_sampled_codes_equal_eager_for_a_seed(tiny, knobs: dict) -> None:
    """Whole seeded runs agree. (The two attention layouts give logits ~1e-7 apart, so a draw that
    sits exactly on a top-p boundary may legitimately go the other way; the sampler's own exactness
    is the test above, on identical logits.)"""
    controls = Controls(prompt=PROMPT, seed=7, **knobs)
    want, _ = run(Generator(tiny, controls), 150)
    got, _ = run(GraphGenerator(tiny, controls, capture=CAPTURE), 150)
    assert torch.equal(got, want)
    assert len(torch.unique(want[0])) > 20


def test_sampling_shape_changes_rebuild_once(tiny) -> None:
    """Top-k sets the draw's shape and greedy its branch: a change rebuilds once, then holds."""
    gen = GraphGenerator(tiny, Controls(prompt=PROMPT), capture=CAPTURE)
    gen.start()
    gen.step()
    gen.step()
    assert gen.graph.builds == 1
    gen.control.submit(Change("top_k", 100))
    gen.step()
    gen.step()
    assert gen.graph.builds == 2 and gen.graph.k == 100
    gen.control.submit(Change("temperature", 0.0))
    gen.step()
    assert gen.graph.builds == 3 and gen.graph.greedy
    # Greedy is one branch whatever top-k and top-p are: moving them rebuilds nothing.
    gen.control.submit(Change("top_k", 40))
    gen.control.submit(Change("top_p", 0.9))
    gen.step()
    gen.step()
    assert gen.graph.builds == 3


def test_stereo_sampled_codes_equal_eager() -> None:
    lm = in_memory(stereo=True, hidden_size=64, num_layers=2, num_heads=4, ffn_dim=128, seed=2)
    controls = Controls(prompt=PROMPT, seed=3)
    want, _ = run(Generator(lm, controls), 80)
    got, _ = run(GraphGenerator(lm, controls, capture=False), 80)
    assert want.shape[0] == 8 and torch.equal(got, want)


def test_race_draws_what_multinomial_draws() -> None:
    """sampling.draw (both paths' sampler) picks what torch.multinomial picks from the same state."""
    probs = torch.softmax(3 * torch.randn(8, 2048, generator=torch.Generator().manual_seed(0)), dim=-1)
    probs[:, :300] = 0  # filtered tokens
    ids = torch.arange(2048).expand(8, -1)
    for seed in range(20):
        want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
        assert torch.equal(draw(probs, ids, torch.Generator().manual_seed(seed)), want)


@pytest.mark.parametrize("top_k, top_p", [(5, 0.0), (20, 0.7), (0, 0.5)])
def test_draws_follow_transformers_filtered_distribution(top_k: int, top_p: float) -> None:
    """Drawing among the top-k candidates (unsorted, or ranked for top-p) maps back to the right
    token ids: the frequencies match transformers' own top-k/top-p warpers' distribution."""
    logits = 2 * torch.randn(1, 60, generator=torch.Generator().manual_seed(4))
    reference = logits.clone()
    if top_k:
        reference = TopKLogitsWarper(top_k)(None, reference)
    if top_p:
        reference = TopPLogitsWarper(top_p)(None, reference)
    want = reference.softmax(-1)[0]
    draws = sample_tokens(logits.expand(40000, -1), Sampler(top_k=top_k, top_p=top_p), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=60).float() / draws.numel()
    assert set(draws.unique().tolist()) <= set(torch.nonzero(want).flatten().tolist())
    assert (freq - want).abs().max().item() < 0.012


def test_steering_changes_every_token_never_rebuild(tiny) -> None:
    steps = 300
    gen = GraphGenerator(tiny, Controls(prompt=PROMPT, mix={"rock": 1.0}, alpha=0.3), random_vectors(tiny),
                         capture=CAPTURE)
    automate(gen, steps)
    # Sampling knobs move too: they are 0-d tensors written in place.
    for i in range(0, steps, 3):
        gen.control.submit(Change("temperature", 0.8 + 0.1 * (i % 4)), at_step=i)
        gen.control.submit(Change("guidance", 2.0 + (i % 3)), at_step=i)
    alpha_buffer = gen.steering.alpha["residual"]
    seen_alphas = set()
    gen.start()
    for _ in range(steps):
        gen.step()
        seen_alphas.add(round(gen.steering.alpha["residual"].max().item(), 6))
    assert gen.graph.builds == 1 and gen.graph.steps == steps
    assert gen.steering.alpha["residual"] is alpha_buffer  # written in place, never rebound
    assert len(seen_alphas) > 100  # the changes really reached the tensors the step reads
    # A prompt of another length in the same text bucket is copied in place: still one build.
    gen.control.submit(Change("prompt", "rock"))
    gen.prompts.settle()  # encoded on the prompt thread, then queued for the next token
    gen.step()
    assert gen.graph.builds == 1 and gen.control.values.prompt == "rock"
    # Only a prompt in a longer bucket rebinds the cross-attention buffers: exactly one rebuild.
    gen.control.submit(Change("prompt", " ".join(["jazz piano"] * 30)))
    gen.prompts.settle()
    gen.step()
    gen.step()
    assert gen.graph.builds == 2


def test_steps_that_read_every_activation_stay_eager(tiny) -> None:
    gen = GraphGenerator(tiny, Controls(prompt=PROMPT), capture=False)
    gen.start()
    gen.step()
    gen.capture = {}
    gen.step()
    assert gen.graph.steps == 1 and "residual.0" in gen.capture


METER_CONTROLS = Controls(prompt=PROMPT, top_k=1, mix={"rock": 1.0}, alpha=0.3)


def run_metered(gen: Generator, steps: int) -> tuple[torch.Tensor, list, list]:
    """Step `gen` with a genre meter that eases alpha off (ease_at -1: always above) and back
    (ease_at raised halfway); return (codes, readings [(step, scores)], applied [(step, param, value)])."""
    gen.meter = GenreMeter(gen.vectors, layer=1, every=5, ease_at=-1.0, hold=2, ease_seconds=0.1)
    readings, applied = [], []
    gen.listeners.add(lambda e: readings.append((e.step, e.scores)) if isinstance(e, MeterReading) else None)
    gen.listeners.add(lambda e: applied.extend((e.step, c.param, c.value) for c in e.changes)
                      if isinstance(e, Applied) else None)
    gen.start()
    for i in range(steps):
        if i == steps // 2:
            gen.meter.ease_at = 1.5  # nothing scores that high: alpha glides back
        gen.step()
    return gen.delay.codes[0, :, : steps - 1 - gen.delay.max_delay].clone(), readings, applied


def assert_same_meter(got: tuple, want: tuple, tolerance: float) -> None:
    (got_codes, got_readings, got_applied), (want_codes, want_readings, want_applied) = got, want
    assert torch.equal(got_codes, want_codes)
    assert [step for step, _ in got_readings] == [step for step, _ in want_readings]
    for (_, got_scores), (_, want_scores) in zip(got_readings, want_readings, strict=True):
        assert got_scores.keys() == want_scores.keys()
        assert all(abs(got_scores[k] - want_scores[k]) <= tolerance for k in want_scores), (got_scores, want_scores)
    # The easing went both ways, at the same steps with the same values: the meter drove the session alike.
    assert got_applied == want_applied
    assert {value for _, param, value in want_applied if param == "alpha"} == {0.0, 0.3}


def test_meter_reads_inside_the_static_step_what_eager_reads(tiny) -> None:
    """A meter no longer sends steps to the eager path: the static step copies the tap into its
    buffer, and the readings, the easing they trigger and the codes equal the eager Generator's.
    (Scores are rounded to 4 decimals; the two attention layouts differ by ~1e-7, so a score on a
    rounding boundary may land one unit apart.)"""
    steps, vectors = 120, random_vectors(tiny)
    want = run_metered(Generator(tiny, METER_CONTROLS, vectors), steps)
    static = GraphGenerator(tiny, METER_CONTROLS, vectors, capture=CAPTURE)
    got = run_metered(static, steps)
    assert static.graph.steps == steps and static.graph.builds == 1
    assert static.graph.tap == "unsteered.1"
    assert_same_meter(got, want, tolerance=METER_TOL)
    assert len(want[1]) == steps // 5
    # Another tap is another graph: moving the meter's layer rebuilds once, then holds.
    static.meter = GenreMeter(vectors, layer=0, every=5)
    static.step()
    static.step()
    assert static.graph.builds == 2 and static.graph.tap == "unsteered.0"


def test_decode_step_is_the_one_rule_every_command_follows(tiny) -> None:
    """render, play, eval and bench (--soak) all resolve --decode here (setup.generator_class for the
    first two): auto is the graph on CUDA only; graph on the CPU is the static step, uncaptured."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # (a device object needs no GPU)
    assert [decode_step(d, cpu) for d in ("auto", "eager", "graph")] == ["eager", "eager", "graph"]
    assert [decode_step(d, cuda) for d in ("auto", "eager", "graph")] == ["graph", "eager", "graph"]
    assert GENERATORS["eager"] is Generator and GENERATORS["graph"] is GraphGenerator
    for decode in ("auto", "eager", "graph"):
        chosen = generator_class(argparse.Namespace(decode=decode), tiny)
        assert chosen is GENERATORS[decode_step(decode, tiny.device)]
    assert "--decode 'fast' is not one of auto, graph, eager" in one_line_error(decode_step, "fast", cpu)
    assert not GraphGenerator(tiny, Controls(prompt=PROMPT)).graph.capture  # CPU: nothing to capture with


def test_graph_decoder_refuses_skipping_steering(tiny) -> None:
    gen = Generator(tiny, Controls(prompt=PROMPT))
    with pytest.raises(ValueError, match="apply_all"):
        GraphDecoder(gen.dec, gen.cache, gen.steering)
    steering = SteeringTensors(gen.dec.num_layers, gen.dec.d_model, 1, torch.device("cpu"), apply_all=True)
    with pytest.raises(ValueError, match="CUDA"):
        GraphDecoder(gen.dec, gen.cache, steering, capture=True)


# bf16 static against fp32 eager, teacher-forced on the fp32 run's inputs so every step compares
# like with like. bf16 keeps 8 mantissa bits (~0.4 % per rounding); measured on tiny: max |diff|
# 0.77 % of the largest logit, raw-logit argmax agreement 97 % (tiny's logits are nearly flat, so
# near-ties are common). Bounds with margin:
BF16_REL_MAX = 0.03
BF16_MIN_AGREE = 0.85


def teacher(gen: Generator, steps: int) -> tuple[list, torch.Tensor]:
    """Run `gen` free for `steps`; return the input of every step (to teacher-force another generator) and
    its raw logits (steps, 2, K, V)."""
    inputs, logits = [], []
    gen.start()
    for _ in range(steps):
        inputs.append((gen._inputs[0].clone(), gen._inputs[1]))  # the token buffer is reused
        gen.step()
        logits.append(gen.last_logits.clone())
    return inputs, torch.stack(logits)


def bf16_drift(device: str, capture: bool | None) -> tuple[float, float]:
    """Teacher-forced, 120 steps: the bf16 static step (captured on CUDA when `capture`) against fp32 eager on
    the same weights and inputs. Returns (max |Δlogit| / max |logit|, raw-logit argmax agreement)."""
    steps = 120
    fp32 = load_model("tiny", device, "float32")
    bf16 = load_model("tiny", device, "bfloat16")
    inputs, want_logits = teacher(Generator(fp32, Controls(prompt=PROMPT, seed=1)), steps)
    static = GraphGenerator(bf16, Controls(prompt=PROMPT, seed=1), capture=capture)
    _, got_logits = run(static, steps, inputs)
    assert got_logits.dtype == torch.bfloat16
    rel = float((got_logits.float() - want_logits).abs().max() / want_logits.abs().max())
    agree = float((got_logits.float().argmax(-1) == want_logits.argmax(-1)).float().mean())
    print(f"bf16 static ({device}, capture {static.graph.capture}) vs fp32 eager: logits rel {rel:.4f}, "
          f"argmax agree {agree:.3f}")
    return rel, agree


def test_bf16_static_vs_fp32_eager() -> None:
    steps = 120
    rel, agree = bf16_drift("cpu", capture=False)
    assert rel < BF16_REL_MAX, f"bf16 logits off by {rel:.4f} of the logit scale"
    assert agree >= BF16_MIN_AGREE
    bf16 = load_model("tiny", "cpu", "bfloat16")

    # Static and eager bf16 are not bit-identical: the static step attends the whole window under a mask,
    # eager only the filled part, so a logit differs by a bf16 ulp now and then, and free-running greedy
    # codes part at the first near-tie (tiny's logits are nearly flat: after transformers 5.25 rebuilt tiny,
    # at frame 49 of 116). Teacher-forced on eager bf16's own inputs the two differ by rounding alone:
    # a few ulps of the logit scale, and every raw argmax that differs is a tie within that rounding.
    greedy = Controls(prompt=PROMPT, top_k=1)
    inputs, want = teacher(Generator(bf16, greedy), steps)
    _, got = run(GraphGenerator(bf16, greedy, capture=False), steps, inputs)
    want, got = want.float(), got.float()
    delta = (got - want).abs()
    assert delta.max() <= 4 * 2**-8 * want.abs().max(), f"static bf16 off eager bf16 by {delta.max():.4f}"
    top2 = want.topk(2, dim=-1).values
    differ = got.argmax(-1) != want.argmax(-1)
    margin, rounding = (top2[..., 0] - top2[..., 1])[differ], 2 * delta.amax(-1)[differ]
    print(f"static vs eager bf16: max |Δlogit| {delta.max():.4f}, {int(differ.sum())} of {differ.numel()} "
          f"argmaxes differ, each at a tie within rounding")
    assert (margin <= rounding).all(), f"an argmax differs at a margin {margin.max():.4f} beyond rounding"


# -- on a GPU: the captured graph itself (skipped on CPU-only machines) ------------------------
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda_only
def test_cuda_graph_matches_eager_and_captures_once() -> None:
    lm = load_model("tiny", "cuda", "float32")
    vectors, steps = random_vectors(lm), 240
    controls = Controls(prompt=PROMPT, top_k=1, mix={"rock": 1.0}, alpha=0.3)
    eager, graph = Generator(lm, controls, vectors), GraphGenerator(lm, controls, vectors)
    assert graph.graph.capture
    automate(eager, steps)
    automate(graph, steps)
    want_codes, want_logits = run(eager, steps)
    got_codes, got_logits = run(graph, steps)
    assert graph.graph.builds == 1 and graph.graph.steps == steps
    assert (got_logits - want_logits).abs().max().item() < 1e-4
    assert torch.equal(got_codes, want_codes)


@cuda_only
def test_cuda_graph_keeps_the_graph_with_a_meter_and_reads_what_eager_reads() -> None:
    lm = load_model("tiny", "cuda", "float32")
    steps, vectors = 120, random_vectors(lm)
    want = run_metered(Generator(lm, METER_CONTROLS, vectors), steps)
    graph = GraphGenerator(lm, METER_CONTROLS, vectors)
    got = run_metered(graph, steps)
    assert graph.graph.capture and graph.graph._graph is not None  # replayed, not run eagerly
    assert graph.graph.steps == steps and graph.graph.builds == 1
    assert_same_meter(got, want, tolerance=1e-3)  # the logits agree to 1e-4 on CUDA (test above)


@cuda_only
def test_cuda_graph_sampled_codes_equal_eager_for_a_seed() -> None:
    lm = load_model("tiny", "cuda", "float32")
    controls = Controls(prompt=PROMPT, seed=7, temperature=0.9, top_p=0.95)
    want, _ = run(Generator(lm, controls), 150)
    got, _ = run(GraphGenerator(lm, controls), 150)
    assert torch.equal(got, want)


def test_a_capture_that_fails_falls_back_to_the_uncaptured_step_with_one_warning(tiny, monkeypatch) -> None:
    """A capture refused at run time (an op that cannot be captured, an out-of-memory, the driver) costs one
    warning and the graph, never the session: the same static step runs uncaptured, the codes are eager's.
    Mocked: the capture itself (it needs the CUDA runtime); it runs the warm-up (which draws) and then raises."""
    def refused(self: GraphDecoder) -> None:
        self._run()  # the warm-up ran and moved the random stream; the capture then fails
        raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(GraphDecoder, "_capture", refused)
    got, want, gen, notices = run_captured(tiny, Controls(prompt=PROMPT, seed=4, temperature=0.9))
    assert torch.equal(got, want)  # the random stream was restored: the same music as if nothing had happened
    assert [n.level for n in notices] == ["warning"] and "\n" not in notices[0].text
    assert notices[0].text.startswith("CUDA graph capture failed (RuntimeError: CUDA error: out of memory CUDA")
    assert gen.graph.capture is False and gen.graph.fallback == notices[0].text
    assert gen.graph.builds == 1 and gen.graph.steps == 60  # no second try: every later step runs uncaptured


@cuda_only
def test_cuda_graph_bf16_within_the_stated_tolerance_of_fp32_eager() -> None:
    """The captured bf16 step on CUDA keeps the bounds the CPU static step keeps (BF16_REL_MAX, BF16_MIN_AGREE)."""
    rel, agree = bf16_drift("cuda", capture=None)  # None: captured on CUDA
    assert rel < BF16_REL_MAX, f"bf16 logits off by {rel:.4f} of the logit scale"
    assert agree >= BF16_MIN_AGREE


@cuda_only
def test_cuda_capture_failure_falls_back_and_the_session_goes_on(monkeypatch) -> None:
    """On the GPU itself: a capture refused by the runtime (here: an op that is illegal while capturing, a host
    sync) costs the graph and one warning; the uncaptured step gives the eager codes."""
    lm = load_model("tiny", "cuda", "float32")
    run_static = GraphDecoder._run

    def syncing(self: GraphDecoder) -> None:
        run_static(self)
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # illegal during capture: the capture fails as a real one would

    monkeypatch.setattr(GraphDecoder, "_run", syncing)
    controls = Controls(prompt=PROMPT, top_k=1)
    want, _ = run(Generator(lm, controls), 60)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        graph = GraphGenerator(lm, controls)
        graph.graph.on_fallback = lambda text: warnings.warn(text, RuntimeWarning, stacklevel=2)
        got, _ = run(graph, 60)
    assert torch.equal(got, want) and graph.graph.capture is False and graph.graph.builds == 1
