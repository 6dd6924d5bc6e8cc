"""`musicsteer bench`: the engine's token loop against transformers' own `generate`, same model.

Five contenders run on one loaded model object (same weights, dtype and prompt):
  engine              the `Generator` loop, MusicGen sampling (top-k 250, CFG 3), no steering;
  engine+steer        the same with one residual steering term at the vectors' best layer;
  engine+graph        `GraphGenerator`: on CUDA one captured graph replayed per token;
  engine+graph+steer  the same with steering automated every token (`knobs.automate_steering`);
  hf_generate         `model.generate(do_sample=True, guidance_scale=3)`, EnCodec decode excluded.
With `batch` > 1, engine@B{batch} and engine+graph@B{batch} join them: the unsteered contenders
decoding `batch` streams at once (seeds 0, 1, …); their frames/s (steps/s × batch: every step
completes a frame of each stream) is set against the same step's B = 1 (ratios `…@B{batch}_vs_…`).
The machines this runs on are shared and noisy, so the contenders alternate within every repeat
(A B C D E A B C D E ...) and the report gives medians, with the per-repeat values kept in `extra`.
`decode_steps` (the command's --decode) limits the engine's contenders, cold starts, knob latency
and ratios to one token step; the recapture check runs with the graph step only.

Around the timed repeats: first, before anything else touches the freshly loaded model, one cold
session each of engine+graph and engine (time to the first frame of codes, cold); last, time to first
audio (`ttfa_audio_s`: to the first PCM chunk out of the streaming EnCodec decoder, every frame pushed as a
session pushes it), a recapture check (α, mix, layer and site changing every token) and the knob → applied
latency of both generators. `ttfa_s` stays the time to the first frame of codes: the audio figure adds the
decoder's chunk and lookahead frames and its first decode to it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import transformers
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.models.encodec.modeling_encodec import EncodecDecoderOutput

from musicsteer.engine.control import Controls
from musicsteer.engine.events import Applied
from musicsteer.engine.generator import fast_decoder
from musicsteer.engine.graph import GENERATORS, GraphGenerator
from musicsteer.engine.loading import dtype_name
from musicsteer.engine.streaming_decoder import StreamingConfig, StreamingDecoder
from musicsteer.engine.vectors import SteeringVectors

from .knobs import LateReader, automate_steering, knob_latencies, recapture_check

if TYPE_CHECKING:
    from musicsteer.engine.loading import LoadedModel

PROMPT = "lo-fi jazz with warm piano"
STEER_ALPHA = 0.5
WARMUP_STEPS = 16  # enough to build the fast decoder and settle kernel choices, cheap on big models
COLD_ORDER = ("engine+graph", "engine")  # the graph first: it is the CUDA path, whose cold start matters
DECODE_STEPS = tuple(GENERATORS)  # the token steps: ("eager", "graph")
# The engine's contenders: (token step, steering: None, "fixed" (one term) or "automated" (every token)).
ENGINE_CONTENDERS = {"engine": ("eager", None), "engine+steer": ("eager", "fixed"),
                     "engine+graph": ("graph", None), "engine+graph+steer": ("graph", "automated")}
# Each ratio: its contenders and how it is made of their results (omitted when one did not run).
RATIOS: dict[str, tuple[tuple[str, ...], Callable[..., float]]] = {
    "engine_vs_hf_generate": (("engine", "hf_generate"), lambda e, hf: e.steps_per_s / hf.steps_per_s),
    "graph_vs_engine": (("engine+graph", "engine"), lambda g, e: g.steps_per_s / e.steps_per_s),
    "graph_vs_hf_generate": (("engine+graph", "hf_generate"), lambda g, hf: g.steps_per_s / hf.steps_per_s),
    "graph_steer_vs_hf_generate": (("engine+graph+steer", "hf_generate"),
                                   lambda gs, hf: gs.steps_per_s / hf.steps_per_s),
    "steer_overhead_pct": (("engine+steer", "engine"), lambda s, e: (s.ms_per_step / e.ms_per_step - 1) * 100),
    "graph_steer_overhead_pct": (("engine+graph+steer", "engine+graph"),
                                 lambda gs, g: (gs.ms_per_step / g.ms_per_step - 1) * 100),
    # The same from the median single step (no prefill, robust to contention bursts).
    "engine_vs_hf_generate_step_median": (("engine", "hf_generate"),
                                          lambda e, hf: hf.extra["ms_per_step_median_of_steps"]
                                          / e.extra["ms_per_step_median_of_steps"]),
}


@dataclass
class BenchResult:
    name: str
    steps_per_s: float
    rtf: float  # steps_per_s / frame rate: > 1 is faster than real time
    ttfa_s: float  # time to the first complete frame of CODES, warm (median of the timed sessions)
    ms_per_step: float
    ttfa_cold_s: float | None = None  # the same for this contender's first session in the process
    # Time to first AUDIO, warm: Generator() to the first PCM chunk out of the streaming decoder (median of
    # `repeats` sessions; engine contenders at B = 1 only). The goal (<= 150 ms warm) is about this one.
    ttfa_audio_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    seconds: float  # wall time of the timed steps
    ttfa_s: float
    steps: int
    step_s: list[float]  # each decode step on its own: its median shrugs off a burst of contention
    decoder_build_s: float = 0.0  # building the FastDecoder: only the first session of a fresh model does
    graph_builds: int | None = None  # captures (CUDA) or would-be captures (CPU) of a GraphGenerator
    changes_applied: int = 0  # control changes the generator applied (the automated contender)


def _sync(device: torch.device) -> None:
    # CUDA and MPS work is asynchronous: read the clock only once the queued kernels have finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass  # not Linux: keep platform's name
    return f"{device.type} ({torch.get_num_threads()} threads, {cpu})"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows has no load average
        return None


def random_vectors(lm: LoadedModel, seed: int = 0) -> SteeringVectors:
    """Two random unit directions per layer: the cost of steering does not depend on which."""
    gen = torch.Generator().manual_seed(seed)
    layers, width = lm.num_layers, lm.d_model
    directions = {label: torch.randn(layers, width, generator=gen) for label in ("a", "b")}
    return SteeringVectors.create(directions, model=lm.name, method="random", best_layer=layers // 2)


def _controls(vectors: SteeringVectors | None) -> Controls:
    return Controls(prompt=PROMPT) if vectors is None else Controls(prompt=PROMPT, mix={"a": 1.0}, alpha=STEER_ALPHA)


def _streams(vectors: SteeringVectors | None, batch: int) -> Controls | list[Controls]:
    """One stream's controls, or `batch` streams of them seeded 0, 1, … (the variations of a prompt)."""
    one = _controls(vectors)
    return one if batch == 1 else [dataclasses.replace(one, seed=seed) for seed in range(batch)]


def _run_engine(lm: LoadedModel, steps: int, vectors: SteeringVectors | None, step: str,
                automate: bool = False, batch: int = 1) -> _Run:
    """One session of the token step `step` ("eager" or "graph") over `batch` streams: `steps` timed
    steps (0: only up to the first frame, for a cold start). automate: steering moves every token
    (`automate_steering`), submitted before the clock starts."""
    _sync(lm.device)
    t0 = time.perf_counter()
    fast_decoder(lm)  # cached on the model: timed apart so a cold session shows what it paid for it
    decoder_build_s = time.perf_counter() - t0
    gen = GENERATORS[step](lm, _streams(vectors, batch), vectors)
    graph = isinstance(gen, GraphGenerator)
    applied: list[int] = []
    if automate:
        gen.listeners.add(lambda event: applied.append(len(event.changes)) if isinstance(event, Applied) else None)
        automate_steering(gen, steps + gen.delay.max_delay + 2)  # the capturing step and the first frame too
    gen.start()
    if graph:
        gen.step()  # captures the graph: a one-off, counted in ttfa, not in steps/s
    _sync(lm.device)
    t_start = time.perf_counter()
    ttfa = math.nan
    stamps = [t_start]
    reader = LateReader(gen)  # frames read one token late, as the streaming decoder reads them
    for _ in range(steps):
        frame = reader.step()
        if frame is not None and math.isnan(ttfa):
            _ = frame.codes  # the first frame is waited for at once: time to the first frame on the host
            ttfa = time.perf_counter() - t0
        stamps.append(time.perf_counter())
    _sync(lm.device)
    t_end = time.perf_counter()
    if math.isnan(ttfa):  # fewer steps than the delay pattern needs: finish the first frame untimed
        while (frame := gen.step()) is None:
            pass
        _ = frame.codes  # on CUDA: the wait for its copy to the host is part of the first frame's time
        ttfa = time.perf_counter() - t0
    return _Run(t_end - t_start, ttfa, steps, [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
                decoder_build_s, gen.graph.builds if graph else None, sum(applied))


def _time_to_audio(lm: LoadedModel, step: str, decoder: StreamingDecoder) -> float:
    """Seconds from Generator() to the first chunk of PCM on the host out of `decoder` (reset here), as a
    session makes it: every frame's codes pushed as it is read (one token late, `LateReader`), the first
    chunk decoded and copied to the host. A graph session captures its graph on its first step: counted."""
    _sync(lm.device)
    t0 = time.perf_counter()
    gen = GENERATORS[step](lm, _controls(None), None)
    decoder.reset()
    gen.start()
    reader = LateReader(gen)
    # The first chunk needs the delay pattern, the chunk and the lookahead in frames: bounded, with room.
    for _ in range(gen.delay.max_delay + decoder.config.chunk_frames + decoder.lookahead_frames + 64):
        frame = reader.step()
        if frame is not None and decoder.push(frame.codes[0]) is not None:
            return time.perf_counter() - t0  # push returns host PCM: the decode and the copy are done
    raise RuntimeError("the streaming decoder gave no audio")  # a decoder fault, not a timing


@contextmanager
def _no_audio_decode(lm: LoadedModel) -> Iterator[None]:
    """Swap EnCodec's decode for one returning silence of the right shape, and restore it.

    `generate` decodes all the audio once at the end; the engine streams codes and leaves the
    decode to the streaming decoder. Timing only the token loop on both sides is the fair
    comparison, so this measures generate's loop; it does not fake its result (the codes are real).
    """
    encoder = lm.model.audio_encoder
    had_own = "decode" in vars(encoder)  # an instance attribute to put back, not the class method
    original = encoder.decode
    hop = round(encoder.config.sampling_rate / lm.frame_rate)

    def silent_decode(codes: torch.Tensor, *args: Any, **kwargs: Any) -> EncodecDecoderOutput:
        # codes: (frames_chunks, B, K, T) -> audio (B, 1, T * hop), as EnCodec would return.
        audio = torch.zeros(codes.shape[1], 1, codes.shape[-1] * hop, device=codes.device)
        return EncodecDecoderOutput(audio_values=audio)

    encoder.decode = silent_decode
    try:
        yield
    finally:
        if had_own:
            encoder.decode = original
        else:
            del encoder.decode  # back to the class's bound method, the very same function


class _StepClock(StoppingCriteria):
    """Never stops generation; notes the time at the end of each of generate's decode steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _run_generate(lm: LoadedModel, steps: int) -> _Run:
    clock = _StepClock(lm.device)
    inputs = lm.processor(text=[PROMPT], padding=True, return_tensors="pt").to(lm.device)
    defaults = Controls()
    # fork_rng: generate samples from the global RNG; seed it for repeatability, restore it after.
    with _no_audio_decode(lm), torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
        torch.manual_seed(defaults.seed)
        _sync(lm.device)
        t0 = time.perf_counter()
        lm.model.generate(**inputs, do_sample=True, guidance_scale=defaults.guidance, top_k=defaults.top_k,
                          max_new_tokens=steps, stopping_criteria=StoppingCriteriaList([clock]))
        _sync(lm.device)
        seconds = time.perf_counter() - t0
    # generate returns every frame at once (its streamer is broken in transformers 5.23), so its
    # first frame arrives with the last. Step intervals start at the first stamp: the first step
    # also ran the text encoder.
    return _Run(seconds, seconds, steps, [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)])


def _summarise(name: str, runs: list[_Run], frame_rate: float, note: str, cold: _Run | None,
               batch: int = 1) -> BenchResult:
    rates = [r.steps / r.seconds for r in runs]
    ms = [1000 * r.seconds / r.steps for r in runs]
    ttfa = [r.ttfa_s for r in runs]
    rate = statistics.median(rates)
    each = [t for r in runs for t in r.step_s] or [r.seconds / r.steps for r in runs]  # steps=1
    extra: dict[str, Any] = {"steps_per_s_runs": rates, "ms_per_step_runs": ms, "ttfa_s_runs": ttfa,
                             "ms_per_step_median_of_steps": 1000 * statistics.median(each), "note": note}
    if batch > 1:  # every step completes one frame of each stream
        extra.update(batch=batch, frames_per_s=rate * batch, frames_per_s_runs=[r * batch for r in rates])
    if runs[0].graph_builds is not None:
        extra["graph_builds_runs"] = [r.graph_builds for r in runs]
        extra["graph_builds"] = max(r.graph_builds for r in runs)  # 1 = never recaptured after the first capture
    if any(r.changes_applied for r in runs):
        extra["changes_applied_runs"] = [r.changes_applied for r in runs]
    return BenchResult(name, rate, rate / frame_rate, statistics.median(ttfa), statistics.median(ms),
                       ttfa_cold_s=None if cold is None else cold.ttfa_s, extra=extra)


def run_benchmark(lm: LoadedModel, steps: int = 100, repeats: int = 3, warmup: int = 1,
                  recapture_tokens: int = 1000, knob_changes: int = 50,
                  decode_steps: tuple[str, ...] = DECODE_STEPS, batch: int = 1) -> dict[str, Any]:
    """Time every contender, interleaved, plus cold starts, recaptures and knob latency; a JSON-ready report.

    Pass a freshly loaded model: its first sessions here are the cold starts. recapture_tokens or
    knob_changes 0 skip those measurements. decode_steps: the token steps whose engine contenders,
    cold starts and knob latency run ("eager", "graph" or both); hf_generate always runs, the
    recapture check only with "graph" (it counts the graph's captures). batch > 1 adds the batched
    contenders (module docstring). Raises ValueError for counts out of range or an unknown or missing step."""
    if steps < 1 or repeats < 1 or warmup < 0 or recapture_tokens < 0 or knob_changes < 0 or batch < 1:
        raise ValueError("steps, repeats and batch must be >= 1; warmup, recapture_tokens and knob_changes >= 0")
    if not decode_steps or not set(decode_steps) <= set(DECODE_STEPS):
        raise ValueError(f"decode_steps must name some of {DECODE_STEPS}, got {decode_steps}")
    vectors = random_vectors(lm)
    runners: dict[str, Callable[[int], _Run]] = {
        name: partial(_run_engine, lm, vectors=vectors if steer else None, step=step, automate=steer == "automated")
        for name, (step, steer) in ENGINE_CONTENDERS.items() if step in decode_steps}
    plain = [name for name in COLD_ORDER if name in runners]  # the unsteered engine contender of each step
    batched = {f"{name}@B{batch}": name for name in ENGINE_CONTENDERS if name in plain and batch > 1}  # -> its B = 1
    for name, single in batched.items():
        runners[name] = partial(_run_engine, lm, vectors=None, step=ENGINE_CONTENDERS[single][0], batch=batch)
    contenders = [*runners.items(), ("hf_generate", lambda n: _run_generate(lm, n))]
    runs: dict[str, list[_Run]] = {name: [] for name, _ in contenders}
    load_before = _load_average()
    # no_grad, not inference_mode: the engine's first Generator re-lays the model's weights
    # (FastDecoder), and inference tensors would break later autograd or in-place use of the model.
    with torch.no_grad():
        # Cold first, before any other session touches the model: the first of them builds the
        # FastDecoder and meets every first-call cost (CUDA kernel loading, cuBLAS handles).
        cold = {name: runners[name](0) for name in plain}
        for _ in range(warmup):
            for _, run in contenders:
                run(min(steps, WARMUP_STEPS))
        for _ in range(repeats):
            for name, run in contenders:
                runs[name].append(run(steps))
        recapture = None
        if recapture_tokens and "graph" in decode_steps:
            recapture = recapture_check(GraphGenerator(lm, _controls(vectors), vectors), recapture_tokens)
        # Time to first audio, warm, as a session makes it (its decoder built once, as a session builds it at start).
        # fork_rng: building the decoder's layers draws their initial weights from the global RNG; the bench
        # leaves it where it was.
        with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
            decoder = StreamingDecoder(lm, StreamingConfig())
            audio = {name: statistics.median(_time_to_audio(lm, ENGINE_CONTENDERS[name][0], decoder)
                                             for _ in range(repeats)) for name in plain}
        generators = {name: GENERATORS[ENGINE_CONTENDERS[name][0]] for name in plain}
        latency = knob_latencies(lm, _controls(vectors), vectors, knob_changes, generators) if knob_changes else None

    notes = {
        "engine": "steps/s over `steps` step() calls after start(); ttfa includes Generator() + start()",
        "engine+steer": f"as engine, one residual term (alpha {STEER_ALPHA}) at layer {vectors.best_layer}",
        "engine+graph": "as engine via GraphGenerator (CUDA: one captured graph replayed per token; CPU: the "
                        "same static step run eagerly); the capturing first step is untimed, in ttfa: every "
                        "session captures its own graph, warm ones too",
        "engine+graph+steer": "as engine+graph, steering automated with at_step: alpha changes every token, "
                              "the mix every 5th, the layer every 7th, the site every 11th; graph_builds "
                              "1 = no recapture after the first capture",
        "hf_generate": "wall time of generate() incl. text encoding and one prefill, EnCodec decode "
                       "excluded (no-op decode); ttfa = whole call (no streaming)",
    }
    for name, single in batched.items():
        notes[name] = (f"as {single}, {batch} streams at once (seeds 0..{batch - 1}): steps/s and rtf per stream, "
                       "extra.frames_per_s = steps/s x batch (frames of all streams)")
    results = [_summarise(name, runs[name], lm.frame_rate, notes[name], cold.get(name),
                          batch if name in batched else 1) for name, _ in contenders]
    for result in results:
        result.ttfa_audio_s = audio.get(result.name)
    by_name = {r.name: r for r in results}
    ratios = {name: ratio(*(by_name[n] for n in names)) for name, (names, ratio) in RATIOS.items()
              if all(n in by_name for n in names)}
    for name, single in batched.items():  # frames/s of the batch against its step at B = 1
        ratios[f"{name}_vs_{single}_frames_per_s"] = by_name[name].extra["frames_per_s"] / by_name[single].steps_per_s
    return {
        "model": lm.name,
        "device": device_description(lm.device),
        "dtype": dtype_name(lm.dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "steps": steps,
        "repeats": repeats,
        "decode_steps": list(decode_steps),
        "prompt": PROMPT,
        # Other users' load on a shared machine explains outliers better than any statistic.
        "load_avg_1min": [load_before, _load_average()],
        "results": [asdict(r) for r in results],
        "batch": batch,
        "ratios": ratios,
        "cold_start": {
            "order": plain,
            "fast_decoder_build_s": cold[plain[0]].decoder_build_s,
            "note": "ttfa_cold_s: each contender's first session in this process, from Generator() to the first "
                    f"frame of codes. {plain[0]} ran first on the freshly loaded model: it includes building "
                    "the FastDecoder (fast_decoder_build_s; ~0 means the model had been used before the bench) "
                    "and first-call kernel init (and, for engine+graph, the graph capture)"
                    + (f"; {plain[1]} ran next and pays only its own first calls" if len(plain) > 1 else "")
                    + ". ttfa_s is warm: the median over the timed sessions, after cold and warm-up ones. "
                    "ttfa_audio_s (warm, engine contenders): from Generator() to the first PCM chunk out of the "
                    "streaming EnCodec decoder (StreamingConfig's defaults, as a session's), median of `repeats`",
        },
        "recapture_check": recapture,
        "knob_latency": latency,
    }
