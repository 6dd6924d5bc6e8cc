"""`musicsteer eval` from checked inputs to the files in OUT (the protocol is in protocol.py).

Order of work, cheapest failure first: settings, vectors file and genres (`--pairs all` resolved),
CLAP model, MusicGen model; then the clips (reused when already on disk), CLAP scores, and the outputs:
  table.md             paper Table I (Markdown)
  results.json         settings, Table I numbers, per-clip deltas, the α sweep with intervals and every
                       label's score, the α = 0 check, cross-effect, hold drift, fusion, every clip's scores
  alpha_sweep.png      mean target-genre score vs α, every transition
  effect-{source}.png  P(target) vs α with 95 % bands, one per source genre; effect.csv its numbers
  cross_effect.png     change of every label's score from α = 0, per target; cross_effect.csv
  hold.png, hold.csv   (--hold-seconds) P(target) along the held continuation, per target
  fusion.png, .csv     (--fusion) every label's score, fused against each target alone
  manifest.json        every clip (WAV path, kind, pair, seed, prompt, α, where the continuation
                       starts) and the 2AFC trials
  listening_test.html  the 2AFC page (next to clips/, which it references relatively)
The α = 0 clips must equal the unsteered ones code for code: when any differs, everything is written
and the run ends with one line (exit 2) naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from musicsteer.engine.errors import MusicsteerError, shown
from musicsteer.engine.files import only_writer
from musicsteer.engine.generator import DEFAULT_KEEP_SECONDS, DEFAULT_WINDOW_SECONDS
from musicsteer.engine.graph import GENERATORS, decode_step
from musicsteer.engine.loading import LoadedModel, ModelFacts, device_spec, resolve_device
from musicsteer.engine.params import PARAMS
from musicsteer.engine.vectors import SteeringVectors

from . import effect, effect_report, hold, listening, metrics, report
from .clap import ClapScorer
from .clips import Clip, ClipStore, Render, local_render, make_clips
from .plan import plan
from .protocol import CLAP_BATCH, CLIP_BATCH, Protocol, check_clap_template, check_genres, check_labels, check_protocol


@dataclass
class EvalRequest:
    protocol: Protocol
    vectors: str
    out: Path
    clap: str
    template: str
    labels: list[str]  # empty: the vectors file's labels
    trial_seed: int = 0
    clap_batch: int = 8
    decode: str = "auto"  # the token step (--decode): graph.decode_step resolves it on the model's device
    batch: int = CLIP_BATCH.default  # clips generated together (--batch)
    ray: str | None = None  # --ray: the Ray cluster's address ("" = local or found) that makes the clips
    device: str = "auto"  # --device, as `load_model` reads it (with --ray: where the actors go, "cpu" or a GPU)


def evaluate(request: EvalRequest, load_model: Callable[[], LoadedModel]) -> dict:
    """Run the whole evaluation; returns the results dict written to results.json."""
    protocol, out = request.protocol, Path(request.out)
    check_protocol(protocol)  # every setting, before anything is read, loaded or written
    check_clap_template(request.template)
    check_labels(list(request.labels), "--labels")
    CLAP_BATCH.check(request.clap_batch)
    CLIP_BATCH.check(request.batch)
    PARAMS["seed"].named("--trial-seed").check(request.trial_seed)
    PARAMS["decode"].named("--decode").check(request.decode)
    try:  # the paths: a name too long for the file system, a folder we may not enter, is one line here
        if out.exists() and not out.is_dir():
            raise MusicsteerError(f"--out {shown(str(out))} is a file; give a folder")
        if not Path(request.vectors).is_file():
            raise MusicsteerError(f"vectors file {shown(str(request.vectors))} not found")
    except OSError as e:
        raise MusicsteerError(f"cannot use {shown(e.filename)}: {e.strerror or e}") from None
    vectors = SteeringVectors.load(request.vectors)
    protocol = protocol.resolved(vectors.labels)  # --pairs all: every ordered pair of the file's genres
    request = dataclasses.replace(request, protocol=protocol)
    labels = check_labels(list(request.labels or vectors.labels),
                          "--labels" if request.labels else "the vectors file's labels")
    check_genres(protocol, vectors.labels, labels)
    check_protocol(protocol)  # again, now with the pairs: their prompts, the fusions' transitions
    if protocol.layer is not None and not 0 <= protocol.layer < vectors.num_layers:
        raise MusicsteerError(f"--layer {protocol.layer} out of range; the vectors file has layers "
                              f"0..{vectors.num_layers - 1}")
    # CLAP before MusicGen: a missing CLAP model fails before the slow part, not after it.
    scorer = ClapScorer(request.clap, request.template, request.clap_batch)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MusicsteerError(f"cannot create {shown(str(out))}: {e.strerror or e}") from None
    with only_writer(out, "the eval folder"):
        return _evaluate(request, vectors, labels, scorer, load_model)


def _evaluate(request: EvalRequest, vectors: SteeringVectors, labels: list[str], scorer: ClapScorer,
              load_model: Callable[[], LoadedModel]) -> dict:
    """`evaluate` once its inputs are checked and this process alone writes OUT."""
    protocol, out = request.protocol, Path(request.out)
    store = ClipStore(out / "clips")
    with _renderer(request, vectors, load_model) as (model, step, render):
        scorer.to(model.device if request.ray is None else resolve_device("auto"))
        clips = _make_clips(model, vectors, protocol, store, step, request.batch, render)
    held = {name: clip for name, clip in clips.items() if clip.job.kind == "hold"}
    scores = _score(scorer, {name: clip for name, clip in clips.items() if name not in held}, labels,
                    model.frame_rate)
    cuts = hold.spans(protocol.hold_seconds, protocol.hold_window) if held else []
    span_scores = hold.score_spans(scorer, list(held.values()), model.frame_rate, cuts, labels) if held else {}

    layer = vectors.best_layer if protocol.layer is None else protocol.layer
    results = {
        "settings": {"model": model.name, "model_fingerprint": model.fingerprint, "dtype": str(model.dtype),
                     "decode": step,
                     "vectors": str(request.vectors), "vectors_sha256": vectors.sha256, "layer": layer,
                     "site": protocol.site or vectors.site, "clap": request.clap, "template": request.template,
                     "labels": labels, "protocol": protocol.to_json(),
                     "ci": {"method": metrics.CI_METHOD, "level": metrics.CI_LEVEL},
                     # a hold slides as a live session does: the engine's window and keep (capped by the model's)
                     "hold_generator": {"window_seconds": DEFAULT_WINDOW_SECONDS,
                                        "keep_seconds": DEFAULT_KEEP_SECONDS}},
        "transitions": {},
    }
    by_key = {(c.job.kind, c.job.pair, c.job.index, c.job.alpha): c.job.name for c in clips.values()}

    def names(kind: str, pair: str, alpha: float | None) -> list[str]:
        return [by_key[(kind, pair, i, alpha)] for i in range(protocol.n)]

    def rows(kind: str, pair: str, alpha: float | None) -> np.ndarray:  # (N, labels)
        return np.stack([scores[name] for name in names(kind, pair, alpha)])

    def source_rows(pair: str) -> np.ndarray:  # (N, labels): each prompted clip's source clip
        return np.stack([scores[clips[name].job.source_name] for name in names("prompted", pair, None)])

    for source, target in protocol.pairs:
        pair, col = f"{source}:{target}", labels.index(target)
        results["transitions"][pair] = metrics.transition(source_rows(pair)[:, col],
                                                          rows("steered", pair, protocol.alpha)[:, col],
                                                          rows("prompted", pair, None)[:, col])
    check = effect.alpha0_check(protocol, lambda kind, pair, alpha: [store.codes(name).numpy()
                                                                      for name in names(kind, pair, alpha)])
    results |= {"sweep": effect.sweep(protocol, labels, rows, source_rows), "alpha0_check": check,
                "cross_effect": effect.cross_effect(protocol, labels, rows)}
    if held:
        def held_rows(pair: str) -> np.ndarray:  # (N, spans, labels)
            return np.stack([span_scores[name] for name in names("hold", pair, protocol.alpha)])

        results["hold"] = effect.hold(protocol, labels, held_rows, cuts)
    if protocol.fusions:
        results["fusion"] = effect.fusion(protocol, labels, rows)
    results["clips"] = {name: dict(zip(labels, map(float, row), strict=True)) for name, row in scores.items()}
    if held:
        results["hold_clips"] = {name: [dict(zip(labels, map(float, row), strict=True)) for row in spans]
                                 for name, spans in span_scores.items()}
    report.write_json(out / "results.json", results)
    report.write_table(out / "table.md", results)
    report.plot_sweep(out / "alpha_sweep.png", results)
    effect_report.write(out, results)
    _write_listening(out, clips, protocol, request.trial_seed, results["settings"])
    if not check["ok"]:
        raise MusicsteerError(f"α = 0 is not the unsteered continuation: {check['clips'] - check['identical']} of "
                              f"{check['clips']} clips differ in their codes (first: {check['differ'][0]}); "
                              f"everything else is written to {shown(str(out))} (results.json: alpha0_check)")
    return results


@contextmanager
def _renderer(request: EvalRequest, vectors: SteeringVectors,
              load_model: Callable[[], LoadedModel]) -> Iterator[tuple[ModelFacts, str, Render]]:
    """(the model's facts, its token step, how clips are rendered): in this process, or (--ray) by a Ray
    cluster's actors (clips_ray.py), each of which loads the model with `load_model`."""
    if request.ray is not None:
        from .clips_ray import ray_render

        with ray_render(request.ray, load_model, vectors, request.protocol, request.decode,
                        device_spec(request.device)) as found:
            yield found
        return
    lm = load_model()
    vectors.check_model(lm.num_layers, lm.d_model, lm.name)
    step = decode_step(request.decode, lm.device)
    yield lm.facts, step, local_render(lm, vectors, request.protocol, GENERATORS[step])


def _make_clips(model: ModelFacts, vectors: SteeringVectors, protocol: Protocol, store: ClipStore,
                step: str, batch: int, render: Render) -> dict[str, Clip]:
    # The token step is part of every clip's identity: on CUDA the two steps' logits differ in the
    # last bits (~1e-5), enough to move a sampled draw, so a clip made by the other step is not reused.
    # So is the batch size (when batched): a batch's rounding can move a seeded top-k draw too.
    model_id = {"model": model.fingerprint, "dtype": str(model.dtype), "decode": step,
                **({"batch": batch} if batch > 1 else {})}
    jobs = plan(protocol, model_id, vectors)
    with tqdm(total=len(jobs), desc="clips", unit="clip", leave=False) as bar:
        made = make_clips(store, jobs, batch, render, model.sample_rate, bar.update)
    reused = sum(clip.reused for clip in made)
    print(f"clips: {len(made) - reused} generated, {reused} reused from {store.root}")
    return {clip.job.name: clip for clip in made}


def _score(scorer: ClapScorer, clips: dict[str, Clip], labels: list[str], frame_rate: int) -> dict[str, np.ndarray]:
    """CLAP scores of every clip: source clips whole, continuations without their source part."""
    names = list(clips)
    rows: list[np.ndarray] = []
    batch = scorer.batch_size
    with tqdm(total=len(names), desc="CLAP", unit="clip", leave=False) as bar:
        for start in range(0, len(names), batch):
            audios = []
            for name in names[start : start + batch]:
                clip = clips[name]
                tail = (clip.frames - clip.prompt_frames) / frame_rate if clip.prompt_frames else None
                audios.append(scorer.load(clip.wav, tail))
            rows.extend(scorer.scores(audios, labels))
            bar.update(len(audios))
    return dict(zip(names, rows, strict=True))


def _write_listening(out: Path, clips: dict[str, Clip], protocol: Protocol, seed: int, settings: dict) -> None:
    def rel(clip: Clip) -> str:
        return clip.wav.relative_to(out).as_posix()

    pairs: dict[str, list[tuple[str, str]]] = {}
    for clip in clips.values():
        job = clip.job
        if job.kind == "prompted":
            steered = clips[job.name.removesuffix("prompted") + f"steered-a{protocol.alpha:g}"]
            pairs.setdefault(job.pair, []).append((rel(steered), rel(clip)))
    trials = listening.make_trials(pairs, seed)
    listening.write_page(out / "listening_test.html", trials)
    manifest = {
        "format": "musicsteer.eval/1", "settings": settings, "trial_seed": seed, "trials": trials,
        "clips": [{"name": c.job.name, "wav": rel(c), "kind": c.job.kind, "pair": c.job.pair, "index": c.job.index,
                   "alpha": c.job.alpha, "prompt": c.job.controls.prompt, "seed": c.job.controls.seed,
                   "source": c.job.source_name, "prompt_frames": c.prompt_frames, "frames": c.frames}
                  for c in clips.values()],
    }
    report.write_json(out / "manifest.json", manifest)
