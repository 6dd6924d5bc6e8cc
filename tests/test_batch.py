"""Batched generation: B streams decoded at once, each exactly what a lone (B = 1) session with that
stream's controls makes. Each stream has its own prompt, seed and steering; the CFG batch is
[conditional rows, unconditional rows]. Checked on the three shapes of the exactness tests, eager
and through the static (graph) step the CPU runs uncaptured."""

from __future__ import annotations

import pytest
import torch
from conftest import in_memory, random_vectors
from test_exactness import SHAPES, keep_logits

from musicsteer.engine.codec import encode_audio
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Applied, Change
from musicsteer.engine.generator import Generator, render_batch, render_codes
from musicsteer.engine.graph import GENERATORS
from musicsteer.engine.sampling import draw
from musicsteer.engine.synthetic import synthetic_clip

PROMPTS = ("classical piano with strings", "lo-fi jazz with warm piano, brushed drums and a walking upright bass",
           "techno")


def streams(**knobs: object) -> list[Controls]:
    """Three streams that differ in everything a stream owns: prompt (and its length), seed, steering
    (none; one vector at the default layer; a mix at layer 0)."""
    return [Controls(prompt=PROMPTS[0], seed=11, **knobs),
            Controls(prompt=PROMPTS[1], seed=12, mix={"rock": 1.0}, alpha=0.4, **knobs),
            Controls(prompt=PROMPTS[2], seed=13, mix={"jazz": 0.5, "classical": 0.5}, alpha=0.2, layers=(0,),
                     **knobs)]


def run(gen: Generator, frames: int, prompt_codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """render_batch, keeping every step's raw logits: (codes (B, K, frames), logits (steps, 2B, K, V))."""
    logits = keep_logits(gen)
    return render_batch(gen, frames, prompt_codes), torch.stack(logits)


def assert_rows_equal_lone_runs(lm, controls: list[Controls], step: str, frames: int, vectors=None,
                                prompt_codes: torch.Tensor | None = None, **settings: object) -> torch.Tensor:
    """Stream b of one batched run has the codes of a lone run of controls[b], and its logits
    (conditional row b, unconditional row B + b) within float noise of the lone run's."""
    make = GENERATORS[step]
    extra = {"capture": False} if step == "graph" else {}
    codes, logits = run(make(lm, controls, vectors, **extra, **settings), frames, prompt_codes)
    batch = len(controls)
    assert codes.shape[:2] == (batch, lm.num_codebooks)
    for b, control in enumerate(controls):
        lone = None if prompt_codes is None else prompt_codes[b : b + 1] if len(prompt_codes) > 1 else prompt_codes
        want_codes, want_logits = run(make(lm, control, vectors, **extra, **settings), frames, lone)
        assert torch.equal(codes[b], want_codes[0]), f"stream {b}"
        got = logits[:, [b, batch + b]]
        assert (got - want_logits).abs().max().item() < 1e-4, f"stream {b}"
    return codes


@pytest.mark.parametrize("step", ["eager", "graph"])
@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_streams_equal_lone_runs(shape: str, step: str) -> None:
    lm = in_memory(**SHAPES[shape])
    codes = assert_rows_equal_lone_runs(lm, streams(top_k=1), step, 120, random_vectors(lm))
    assert len({tuple(c.flatten().tolist()) for c in codes}) == 3  # the streams differ: not one stream thrice
    assert len(torch.unique(codes[0, 0])) > 5


@pytest.mark.parametrize("step", ["eager", "graph"])
def test_seeded_streams_equal_lone_runs_with_their_seeds(tiny, step: str) -> None:
    """Sampled (CFG 3, temperature 1, top-k off): stream b at B = 4 draws what B = 1 seeded b draws,
    token for token. Top-k off, because a batch's logits round differently from a lone run's (the
    matmuls of 2B rows are other kernels than of 2: ~4e-7 here), and with top-k 250 a candidate
    at the cut can swap with the next; the race pairs noise with candidates in id order, so a swap
    re-pairs every later candidate and changes the draw (seen here at token ~45 of 60 with the
    graph step). Over the whole vocabulary only a tie within 4e-7 at the top could change a draw."""
    controls = [Controls(prompt=PROMPTS[0], seed=b, top_k=0) for b in range(4)]
    codes = assert_rows_equal_lone_runs(tiny, controls, step, 100)
    assert len({tuple(c.flatten().tolist()) for c in codes}) == 4


def test_per_stream_generators_draw_what_one_generator_draws() -> None:
    """The draw itself: a stream's slice filled from its own generator equals a lone (1, K, k) draw."""
    probs = torch.rand(4, 3, 50).softmax(-1)
    ids = torch.arange(50).expand(4, 3, 50)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    batched = draw(probs, ids, gens)
    for b in range(4):
        assert torch.equal(batched[b : b + 1], draw(probs[b : b + 1], ids[b : b + 1], torch.Generator().manual_seed(b)))


def test_window_slides_and_audio_prompts_per_stream(tiny) -> None:
    """Past a (short) window every stream re-prefills its own tail; one audio prompt each, or one for all."""
    each = torch.cat([encode_audio(tiny, synthetic_clip(kind, 0.5, tiny.sample_rate, seed=3)[None])
                      for kind in ("chord", "drums")])  # (2, K, F)
    two = [Controls(prompt=PROMPTS[0], seed=1, top_k=0), Controls(prompt=PROMPTS[2], seed=2, top_k=0)]  # see above
    settings = dict(window_seconds=1.0, keep_seconds=0.3)  # a 51-position window: slides every ~32 frames
    for step in ("eager", "graph"):
        assert_rows_equal_lone_runs(tiny, two, step, each.shape[-1] + 90, prompt_codes=each, **settings)
    codes = assert_rows_equal_lone_runs(tiny, two, "eager", each.shape[-1] + 40, prompt_codes=each[:1])
    assert torch.equal(codes[:, :, : each.shape[-1]], each[:1].expand(2, -1, -1))


def test_a_change_lands_in_its_own_stream_only(tiny) -> None:
    """A scheduled change to stream 1 (steering, prompt, seed) leaves stream 0 as a lone run makes it,
    and makes stream 1 what a lone run with that change makes; listeners are told whose change it was."""
    vectors = random_vectors(tiny)
    controls = [Controls(prompt=PROMPTS[0], seed=1, top_k=0, mix={"rock": 1.0}, alpha=0.3),
                Controls(prompt=PROMPTS[1], seed=2, top_k=0, mix={"rock": 1.0}, alpha=0.3)]
    changes = [(20, Change("alpha", 0.8)), (30, Change("prompt", PROMPTS[2])), (40, Change("seed", 99)),
               (45, Change("mix", {"jazz": 1.0}))]
    batch = Generator(tiny, controls, vectors)
    applied: list[Applied] = []
    batch.listeners.add(lambda event: applied.append(event) if isinstance(event, Applied) else None)
    for at, change in changes:
        batch.rows[1].submit(change, at_step=at)
    codes = render_batch(batch, 80)
    assert [(event.step, event.row) for event in applied] == [(at, 1) for at, _ in changes]
    lone = [Generator(tiny, c, vectors) for c in controls]
    for at, change in changes:
        lone[1].control.submit(change, at_step=at)
    for b in range(2):
        assert torch.equal(codes[b], render_codes(lone[b], 80))
    assert not torch.equal(codes[1], render_codes(Generator(tiny, controls[1], vectors), 80))


def test_sampler_knobs_are_the_batch_s(tiny) -> None:
    with pytest.raises(MusicsteerError, match="stream 1's guidance differs"):
        Generator(tiny, [Controls(prompt="a"), Controls(prompt="b", guidance=5.0)])
    gen = Generator(tiny, [Controls(prompt="a"), Controls(prompt="b")])
    gen.rows[1].submit(Change("temperature", 0.5), at_step=3)
    gen.start()
    with pytest.raises(MusicsteerError, match="temperature"):
        for _ in range(5):
            gen.step()
    with pytest.raises(ValueError, match="render_batch"):
        render_codes(Generator(tiny, [Controls(prompt="a")] * 2), 10)


def test_eval_batches_its_clips_and_each_equals_its_lone_clip(tiny, tmp_path) -> None:
    """eval's --batch: sources and continuations made B at a time (each its own seed, source codes and
    steering) give, greedy, the codes each clip gets alone; a resumed run remakes only what is missing,
    in the batch it was first made in."""
    from conftest import random_vectors

    from musicsteer.engine.generator import Generator
    from musicsteer.engine.sampling import Sampler
    from musicsteer.evaluation.clips import ClipStore, local_render
    from musicsteer.evaluation.plan import batches, plan
    from musicsteer.evaluation.protocol import Protocol
    from musicsteer.evaluation.runner import _make_clips

    vectors = random_vectors(tiny, labels=("rock", "jazz"))
    protocol = Protocol(pairs=(("rock", "jazz"),), n=3, source_seconds=0.3, seconds=0.3, alpha=0.5, alphas=(0.2,),
                        sampling=Sampler(temperature=0.0))
    jobs = plan(protocol, {}, vectors)
    # blocks of one kind and α, never mixed: 3 sources; 3 prompted, 3 unsteered, 3 at each α of 0, 0.2, 0.5
    assert [len(group) for group in batches(jobs, 4)] == [3] * 6
    render = local_render(tiny, vectors, protocol, Generator)
    lone = _make_clips(tiny.facts, vectors, protocol, ClipStore(tmp_path / "lone"), "eager", 1, render)
    store = ClipStore(tmp_path / "batched")
    batched = _make_clips(tiny.facts, vectors, protocol, store, "eager", 4, render)
    assert lone.keys() == batched.keys() and len(lone) == 18
    for name in lone:
        assert torch.equal(ClipStore(tmp_path / "lone").codes(name), store.codes(name)), name
    steered = [name for name in lone if "-steered-a0." in name]  # α 0.2 and 0.5
    prompted = steered[0].rsplit("-steered", 1)[0] + "-prompted"  # another arm, another clip: not all alike
    assert not torch.equal(store.codes(steered[0]), store.codes(prompted))
    gone = store.paths(steered[1])
    gone[2].unlink()  # one clip of the second batch lost its record: only it is made again
    stamps = {name: store.paths(name)[0].stat().st_mtime_ns for name in lone if name != steered[1]}
    again = _make_clips(tiny.facts, vectors, protocol, store, "eager", 4, render)
    assert [name for name, clip in again.items() if not clip.reused] == [steered[1]]
    assert all(store.paths(name)[0].stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert torch.equal(store.codes(steered[1]), ClipStore(tmp_path / "lone").codes(steered[1]))
