"""The CUDA (and MPS) decode path checked on a CPU: fake tensors on a `cuda`/`mps` device, random:small in bf16.

Each token step, prefill, window slide, steering-table update, sampler mode and streaming EnCodec chunk
runs under torch's FakeTensorMode with every weight and buffer on the fake device, watched op by op
(tests/fake_device.py says what is mocked: only what a CPU-only torch cannot have). Inside the parts a
GPU must keep on the device, nothing may take or make a CPU tensor, read a value back to the host or
take a data-dependent shape; the steering update may edit its host mirror, but never read the device
and never copy to it blocking. On a GPU such a fault is a host sync per token (the loop stalls) or,
inside a captured graph, a value frozen at capture; here it fails a test.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import pytest
import torch
from fake_device import MpsAttention, NoEvent, StandInGenerator, Watch, check_draws, device_guards, fake_model
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode, unset_fake_temporarily

from musicsteer.bench.knobs import automate_steering
from musicsteer.engine import sampling, seanet
from musicsteer.engine.control import Controls, ControlState
from musicsteer.engine.delay import DelayPattern
from musicsteer.engine.generator import Frame, Generator
from musicsteer.engine.graph import GraphDecoder, GraphGenerator
from musicsteer.engine.steering import Term
from musicsteer.engine.streaming_decoder import StreamingDecoder
from musicsteer.engine.vectors import SteeringVectors

# The sampler's three shapes: greedy (argmax), top-k (the draw over k candidates), top-p (sorted, masked).
SAMPLERS = {"greedy": {"top_k": 1}, "top-k": {"top_k": 250}, "top-p": {"top_k": 250, "top_p": 0.9, "temperature": 0.8}}
# The captured step on CUDA; the eager step on MPS (no graphs there: --decode auto is eager).
PATHS = {"cuda-graph": ("cuda", GraphGenerator), "cuda-eager": ("cuda", Generator), "mps-eager": ("mps", Generator)}


def make(cls, lm, controls: Controls, vectors=None):  # noqa: ANN001, ANN201
    """The generator of `cls`; a GraphGenerator runs its static step uncaptured (a capture needs the CUDA runtime:
    the function it would capture is what runs)."""
    return cls(lm, controls, vectors, **({"capture": False} if cls is GraphGenerator else {}))


@pytest.fixture(scope="module")
def fake() -> FakeTensorMode:
    with device_guards("cuda", "mps"), MpsAttention(), warnings.catch_warnings():
        # GraphDecoder compares the cross-attention buffers' addresses (data_ptr): fake tensors warn on that.
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        yield FakeTensorMode(allow_non_fake_inputs=False)


@pytest.fixture(scope="module")
def models(fake: FakeTensorMode) -> dict:
    return {device: fake_model(fake, "small", device, torch.bfloat16) for device in ("cuda", "mps")}


def _in_region(watch: Watch, rule: str, method):  # noqa: ANN001, ANN202
    @functools.wraps(method)
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with watch.region(rule):
            return method(*args, **kwargs)
    return run


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    """A Watch, with the engine's parts marked by the rule each must keep (wrapped, not replaced), and the
    CUDA runtime's stand-ins (fake_device's docstring)."""
    w = Watch()
    monkeypatch.setattr(torch, "Generator", StandInGenerator)
    monkeypatch.setattr(torch.cuda, "Event", NoEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    # compile_layers' self-check compares the compiled layers' output bits with the modules': fake tensors have none.
    monkeypatch.setattr(seanet, "_checked", lambda steps, originals, frozen: steps)
    # Its private copy of the codec's layers: torch cannot deep-copy weight-normed fake modules (the copy lands
    # in a fake mode of its own). Building the decoder is not the chunk; the layers compile from the originals.
    monkeypatch.setattr(seanet, "_without_weight_norm", lambda module: module)
    # The controls' host math (vectors mixed, normalised: values read on the host, by design) runs on the
    # vectors' real values, outside fake mode; the terms it gives then go into the fake table as on a GPU.
    terms = ControlState.terms

    def host_terms(self):  # noqa: ANN001, ANN202
        with unset_fake_temporarily():
            return terms(self)

    monkeypatch.setattr(ControlState, "terms", host_terms)
    for owner, name, rule in ((Generator, "_decode", "device"), (GraphGenerator, "_decode", "device"),
                              (Generator, "_slide", "device"), (DelayPattern, "resolve", "device"),
                              (Generator, "_act", "update"), (StreamingDecoder, "_decode_chunk", "device")):
        monkeypatch.setattr(owner, name, _in_region(w, rule, getattr(owner, name)))
    monkeypatch.setattr(sampling, "draw", check_draws(w, sampling.draw))
    fetch = Frame.fetch
    monkeypatch.setattr(Frame, "fetch", classmethod(lambda cls, index, codes: _in_region(w, "transfer", fetch)(
        index, codes)))

    def to_host(audio: torch.Tensor) -> np.ndarray:  # a fake tensor has no values to read: silence of its shape
        assert audio.device.type != "cpu", "a chunk's audio must reach _to_host on the device"
        with w.region("transfer"):
            return np.zeros((audio.shape[0], audio.shape[-1]), dtype=np.float32)

    monkeypatch.setattr(StreamingDecoder, "_to_host", staticmethod(to_host))
    return w


def fake_prompt(gen: Generator, lm) -> None:  # noqa: ANN001
    """The text encoder's states for a 12-token prompt, on the device (the tokenizer makes its tensors from
    host text: prompt encoding runs off the token loop, on the prompt thread, and is not checked here)."""
    width = lm.model.config.text_encoder.d_model
    states = torch.randn(2, 12, width, device=lm.device, dtype=lm.dtype)
    states[1].zero_()
    mask = torch.ones(2, 12, dtype=torch.long, device=lm.device)
    mask[1].zero_()
    gen.prompts.states = lambda prompt: (states, mask)


def steps(watch: Watch, gen: Generator, count: int) -> None:
    """`count` token steps, each watched as a whole ("step": no CPU tensor made, nothing copied from the host
    to the device or read back, anywhere in `Generator.step`; the parts marked "device" keep the stricter rule,
    the steering table's update its own)."""
    for _ in range(count):
        with watch.region("step"):
            gen.step()


def assert_clean(watch: Watch) -> None:
    assert not watch.violations, "\n".join(str(v) for v in watch.violations[:10])


def host_vectors(lm) -> SteeringVectors:  # noqa: ANN001
    """Real vectors on the host, as a vectors file loads them (made outside fake mode: creating them checks values)."""
    directions = {label: torch.randn(lm.num_layers, lm.d_model) for label in ("a", "b", "c")}
    return SteeringVectors.create(directions, model=lm.name, method="random", best_layer=lm.num_layers // 2)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("path", ["cuda-graph", "mps-eager"])
def test_token_step_and_sampler_stay_on_the_device(fake, models, watch, path: str, sampler: str) -> None:
    device, cls = PATHS[path]
    lm = models[device]
    with fake, watch:
        gen = make(cls, lm, Controls(prompt="x", seed=3, **SAMPLERS[sampler]))
        fake_prompt(gen, lm)
        gen.start()
        steps(watch, gen, 2)
    assert_clean(watch)
    if cls is GraphGenerator:
        assert gen.graph.steps == 2 and gen.graph.builds == 1  # the static (captured) function ran both steps
    assert (watch.draws > 0) == (sampler != "greedy")


@pytest.mark.parametrize("plant", ["upload", "host tensor"])
def test_the_watch_sees_the_whole_step_not_only_the_decode(fake, models, watch, monkeypatch, plant: str) -> None:
    """Not vacuous: a per-token upload, or a CPU tensor made, in `Generator.step` outside `_decode` (planted
    here, around the real step, as the reviewer planted it inside) is flagged."""
    step = Generator.step

    def planted(self):  # noqa: ANN001, ANN202
        position = torch.full((1,), self._position)  # a host tensor, every token
        if plant == "upload":
            position.to(self.lm.device)  # ... and its copy to the device
        return step(self)

    monkeypatch.setattr(Generator, "step", planted)
    lm = models["cuda"]
    with fake, watch:
        gen = make(GraphGenerator, lm, Controls(prompt="x", seed=3))
        fake_prompt(gen, lm)
        gen.start()
        steps(watch, gen, 2)
    flagged = [str(v) for v in watch.violations]
    assert any("aten.full.default makes a CPU tensor (1,)" in v for v in flagged), flagged
    assert any("_to_copy.default copies from the host to the device" in v for v in flagged) == (plant == "upload")


@pytest.mark.parametrize("path", list(PATHS))
def test_prefill_and_window_slide_stay_on_the_device(fake, models, watch, path: str) -> None:
    device, cls = PATHS[path]
    lm = models[device]
    with fake, watch:
        gen = make(cls, lm, Controls(prompt="x", seed=1))
        fake_prompt(gen, lm)
        gen.start(torch.zeros(1, lm.num_codebooks, 50, dtype=torch.long, device=lm.device))  # a 1 s audio prompt
        steps(watch, gen, 2)  # the prompt's prefill (50 frames at once), then one token
        gen._position = gen.window  # fast-forward to a full window (fake tensors: no values to fill it with)
        steps(watch, gen, 2)  # the slide: keep_seconds of frames re-prefilled, then one token
    assert gen.frame_offset > 0, "the window never slid"
    assert_clean(watch)


@pytest.mark.parametrize("path", ["cuda-graph", "mps-eager"])
def test_steering_update_edits_host_rows_and_copies_without_reading_the_device(fake, models, watch, path) -> None:
    device, cls = PATHS[path]
    lm = models[device]
    vectors = host_vectors(lm)
    fake.allow_non_fake_inputs = True  # the vectors are real host tensors (the model stays all fake)
    with fake, watch:
        gen = make(cls, lm, Controls(prompt="x", mix={"a": 1.0}, alpha=0.5), vectors)
        fake_prompt(gen, lm)
        automate_steering(gen, 12, mixes=[{"a": 1.0}, {"a": 0.5, "b": 0.5}, {"c": 1.0}])  # α, mix, layer, site move
        gen.start()
        steps(watch, gen, 12)
        with watch.region("update"):  # and directly: several slots, one stream's row
            gen.steering.set_terms([Term("residual", 3, vectors.directions["a"][3], 0.7),
                                    Term("attention", 9, vectors.directions["b"][9], -0.2)], row=0)
    fake.allow_non_fake_inputs = False
    assert_clean(watch)
    if cls is GraphGenerator:
        assert gen.graph.builds == 1  # α, mix, layer and site moved every few tokens: no rebuild


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_streaming_decoder_chunk_stays_on_the_device(fake, models, watch, device: str) -> None:
    lm = models[device]
    with fake:
        decoder = StreamingDecoder(lm)
    with fake, watch:
        out = []
        for _ in range(12):  # host codes, as a Frame hands them over; a chunk decodes at the 9th
            with watch.region("update"):
                pcm = decoder.push(torch.zeros(lm.num_codebooks, dtype=torch.long))
            if pcm is not None:
                out.append(pcm)
    assert out and decoder.samples_out > 0, "no chunk was decoded"
    assert_clean(watch)


def test_the_watch_fails_a_step_that_makes_a_cpu_tensor_or_reads_a_value_back(fake, models, watch,
                                                                            monkeypatch) -> None:
    """The check itself: each fault it exists for, planted in the captured step function, is caught."""
    lm, run = models["cuda"], GraphDecoder._run
    plants = {"makes a CPU tensor": lambda self: (torch.zeros(1), run(self)),
              "read back to the host": lambda self: (self.position.sum().item(), run(self))}
    for fault, planted in plants.items():
        monkeypatch.setattr(GraphDecoder, "_run", planted)
        watch.violations.clear()
        with fake, watch, contextlib.suppress(DataDependentOutputException):  # fake mode raises on .item() too
            gen = GraphGenerator(lm, Controls(prompt="x", top_k=1), capture=False)
            fake_prompt(gen, lm)
            gen.start()
            steps(watch, gen, 1)
        assert any(fault in str(v) and "engine/graph.py" in str(v) for v in watch.violations), watch.violations


def test_device_mps_is_a_device_and_refused_in_one_line_where_there_is_none() -> None:
    """`--device mps` names the Apple GPU (the eager step above runs there); a machine without one says so."""
    from musicsteer.engine.errors import MusicsteerError
    from musicsteer.engine.loading import device_spec, resolve_device

    assert device_spec(" MPS ") == "mps"
    assert device_spec("mps:0") == "mps" == device_spec("MPS:0")  # torch's name of it, as cuda:0 is CUDA's
    if torch.backends.mps.is_available():
        assert resolve_device("mps") == torch.zeros(1, device="mps").device
    else:
        with pytest.raises(MusicsteerError, match="MPS .* is not available") as info:
            resolve_device("mps")
        assert "\n" not in str(info.value) and "--device cpu" in str(info.value)
