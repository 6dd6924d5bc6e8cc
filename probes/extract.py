"""`probe extract`: audio segments -> pooled decoder activations for every layer, cached on disk.

Each segment is encoded by the model's EnCodec, laid out in the delay pattern exactly as a
continuation prompt is prefilled (DelayPattern.reset + prefill_tokens), and run through the
engine's decoder ONCE, teacher-forced, in the CFG batch of generation: the conditional half sees
the --prompt text, the unconditional half the null condition. Only the conditional rows are kept:
they are the rows the engine steers. For every layer we keep the residual stream entering it (row i
of a residual vectors file) and its self-attention output (row i of an attention vectors file),
each pooled over time by the mean and by the last position.

Files are decoded by probes/pipeline.py (--workers N: in N processes, in plan order), cut into the
planned segments and, with the model on the CPU, encoded there too. The segments still to do are cut
into batches in row order before anything runs, so the shards are the same for every worker count and
on Ray (--ray: probes/extract_ray.py runs the same batches on a cluster's actors; this process writes
the cache). A file that does not decode, or decodes shorter than its header promised, is skipped when
it is reached (its segments leave their batch): its rows are listed in the manifest's `missing`
(training and analysis leave them out), it joins `skipped`, and the manifest is written at once, so a
resumed run does not try it again. Every other file's rows are kept.

Pooling skips position 0: it holds only the start token, identical for every segment, so it would
pull all means towards one point. Segments of a batch with fewer frames are padded at the END,
which the causal self-attention keeps from touching the real positions; pooling ignores the pad.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from musicsteer.engine import decoder as decoder_fn
from musicsteer.engine.codec import encode_audio
from musicsteer.engine.delay import DelayPattern
from musicsteer.engine.files import only_writer
from musicsteer.engine.generator import fast_decoder
from musicsteer.engine.kv_cache import KVCache
from musicsteer.engine.loading import LoadedModel, ModelFacts, dtype_name, load_model
from musicsteer.engine.prompts import encode_text
from musicsteer.engine.steering import SteeringTensors

from . import dataset, pipeline
from .cache import FORMAT, KEYS, ActivationCache
from .settings import BATCH, PROMPT, SEGMENT_SECONDS, WORKERS


class PoolingCapture(dict):
    """A capture dict for `decoder.forward` that pools each activation the moment it is stored.

    Keeping every (2B, T, d_model) activation of every layer until the pass ends would cost
    2 x layers x 2B x T x d_model floats (musicgen-small, batch 4, 10 s: 1.6 GB); pooled, it is
    a few kB per layer. Only the conditional rows [:B] are pooled."""

    def __init__(self, lengths: list[int]) -> None:
        super().__init__()
        self.batch = len(lengths)
        self.last = torch.tensor([n - 1 for n in lengths])
        self.weights: Tensor | None = None
        self.lengths = lengths

    def __setitem__(self, key: str, h: Tensor) -> None:
        cond = h[: self.batch].float()  # (B, T, d)
        if self.weights is None:
            # mean over positions 1..n-1 of each row: position 0 is the start token, n.. is padding
            w = torch.zeros(self.batch, cond.shape[1], device=cond.device)
            for row, n in enumerate(self.lengths):
                w[row, 1:n] = 1.0 / max(n - 1, 1)
            self.weights = w
        mean = torch.einsum("bt,btd->bd", self.weights, cond)
        last = cond[torch.arange(self.batch, device=cond.device), self.last.to(cond.device)]
        super().__setitem__(f"{key}.mean", mean.cpu())
        super().__setitem__(f"{key}.last", last.cpu())


@dataclass
class Extractor:
    """One teacher-forced pass per batch of segments through the engine's decoder."""

    lm: LoadedModel
    prompt: str

    def __post_init__(self) -> None:
        self.dec = fast_decoder(self.lm)
        self.text_states, self.text_mask, _ = encode_text(self.lm, self.prompt)  # (2, S, d), cond then null
        self._caches: dict[tuple[int, int], KVCache] = {}
        self.passes = 0

    @property
    def encodes_in_workers(self) -> bool:
        """Whether the decoding workers also run EnCodec's encode (`encode`) on each segment: when the
        model is on the CPU, the encode is CPU work wherever it runs, and in N workers it runs beside
        the forward (tiny model: 61 % of a batch's time was the encode). On a GPU it stays here, on
        the device, and the workers hand over audio."""
        return self.lm.device.type == "cpu"

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """A segment (channels, samples) float at the model's rate -> its codes (1, K, frames) int64,
        on the host (what a decoding worker hands back to this process)."""
        return encode_audio(self.lm, audio).cpu().numpy()

    def layout(self, codes: Tensor) -> Tensor:
        """codes (1, K, F) -> tokens (K, F + 1) in the delayed prefill layout."""
        lm = self.lm
        delay = DelayPattern(lm.num_codebooks, lm.audio_channels, lm.pad_token_id, 1, codes.shape[-1], lm.device)
        delay.reset(codes)
        return delay.prefill_tokens()[0]

    @torch.inference_mode()
    def run(self, codes: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Segments' codes (1, K, frames) (`encode`) -> {"site.pool": (B, layers, d_model) float32}."""
        lm, dec = self.lm, self.dec
        layouts = [self.layout(torch.as_tensor(c, device=lm.device)) for c in codes]
        lengths = [t.shape[-1] for t in layouts]
        steps, batch = max(lengths), len(layouts)
        tokens = torch.full((batch, lm.num_codebooks, steps), lm.pad_token_id, dtype=torch.long, device=lm.device)
        for row, t in enumerate(layouts):
            tokens[row, :, : t.shape[-1]] = t
        cache = self._cache(batch, steps)
        # cross-attention rows in CFG order: B conditional copies, then B null ones
        states = self.text_states.repeat_interleave(batch, dim=0).to(lm.dtype)
        dec.fill_cross_attention(cache, states, self.text_mask.repeat_interleave(batch, dim=0))
        steering = SteeringTensors(dec.num_layers, dec.d_model, batch, lm.device)  # no terms: no steering
        capture = PoolingCapture(lengths)
        positions = torch.arange(steps, device=lm.device)
        decoder_fn.forward(dec, tokens.repeat(2, 1, 1), positions, cache, steering, steps, capture)
        self.passes += 1
        out = {}
        for key in KEYS:
            site, pool = key.split(".")
            rows = [capture[f"{site}.{i}.{pool}"] for i in range(dec.num_layers)]
            out[key] = torch.stack(rows, dim=1).numpy()
        return out

    def _cache(self, batch: int, steps: int) -> KVCache:
        key = (batch, steps)
        if key not in self._caches:
            self._caches.clear()  # segments share one length: at most the last batch differs
            dec = self.dec
            self._caches[key] = KVCache(dec.num_layers, 2 * batch, dec.num_heads, steps, dec.head_dim,
                                        self.lm.dtype, self.lm.device)
        return self._caches[key]


@contextmanager
def cpu_threads(lm: LoadedModel) -> Iterator[None]:
    """One CPU thread for tiny models: their ops are too small to split, and on a shared CPU two
    spinning OpenMP threads made tiny extraction 9x slower (measured 45 ms vs 390 ms per batch)."""
    threads = torch.get_num_threads()
    if lm.device.type == "cpu" and lm.d_model < 256:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def settings_for(model: ModelFacts, segment_seconds: float, prompt: str) -> dict:
    return {"model": model.fingerprint, "segment_seconds": float(segment_seconds), "prompt": prompt,
            "dtype": dtype_name(model.dtype), "sample_rate": model.sample_rate,
            "frame_rate": model.frame_rate, "pooling": "mean over positions 1..T-1; last = position T-1"}


def manifest_for(model: ModelFacts, plan: dataset.Plan, settings: dict) -> dict:
    return {
        "format": FORMAT, "settings": settings, "model_name": model.name, "num_layers": model.num_layers,
        "d_model": model.d_model, "labels": plan.labels,
        "dataset": dataset.fingerprint(plan.segments, {k: settings[k] for k in ("segment_seconds", "sample_rate")}),
        "files": len(plan.sources), "skipped": plan.skipped,
        "segments": [[s.file_id, s.label, s.start, s.length] for s in plan.segments], "complete": False,
    }


def extract(data: str, model: str, out: str, segment_seconds: float = SEGMENT_SECONDS.default,
            prompt: str = PROMPT.default, batch: int = BATCH.default,
            device: str = "auto", dtype: str = "float32", workers: int = WORKERS.default,
            label_column: str | None = None, ray: str | None = None) -> dict:
    """Fill (or finish) the cache at `out` from `data` (folder, CSV or hf:PATH[:SPLIT]); return its manifest.
    `workers` processes decode the audio (0: the main process). `ray` (an address, "" for the local or
    found cluster) runs the forward passes on a Ray cluster's actors instead (probes/extract_ray.py): the
    same cache, written by this process. Bad values are one-line MusicsteerErrors, raised before the
    model loads."""
    check_values(segment_seconds, prompt, batch, workers)
    ActivationCache(out).check_root()
    sources, skipped = dataset.discover(data, label_column)
    dataset.check_labels({s.label for s in sources}, data)
    if ray is not None:
        from .extract_ray import extract_on_ray

        return extract_on_ray(ray, model, device, dtype, data, out, sources, skipped, segment_seconds, prompt,
                              batch, workers)
    lm = load_model(model, device, dtype)
    return extract_with(lm, data, out, sources, skipped, segment_seconds, prompt, batch, workers)


def check_values(segment_seconds: float, prompt: str, batch: int, workers: int) -> None:
    """extract's values against their rows (one line each)."""
    BATCH.check(batch)
    WORKERS.check(workers)
    SEGMENT_SECONDS.check(segment_seconds)
    PROMPT.check(prompt)


# What a run of batches gives back, for the caller to write: a shard, or a file that did not decode.
@dataclass
class Shard:
    index: list[int]  # rows, ascending
    arrays: dict[str, np.ndarray]  # site.pool -> (b, layers, d_model)


@dataclass
class Missing:
    file_id: str
    error: str  # one line
    rows: list[int]  # its rows among the batches run


Results = Callable[[list[list[dataset.Segment]], dataset.Plan], Iterator[Shard | Missing]]


def extract_with(lm: LoadedModel, data: str, out: str, sources: list[dataset.Source],
                 skipped: list[dict[str, str]], segment_seconds: float, prompt: str, batch: int,
                 workers: int) -> dict:
    """`extract` on a loaded model and discovered sources, in this process (the bench times this part)."""
    extractor = Extractor(lm, prompt)

    def results(batches: list[list[dataset.Segment]], plan: dataset.Plan) -> Iterator[Shard | Missing]:
        with cpu_threads(lm):
            yield from run_batches(extractor, batches, plan.sources, workers)

    return fill(lm.facts, data, out, sources, skipped, segment_seconds, prompt, batch, results)


def fill(model: ModelFacts, data: str, out: str, sources: list[dataset.Source], skipped: list[dict[str, str]],
         segment_seconds: float, prompt: str, batch: int, results: Results) -> dict:
    """Plan, open (or resume) the cache, cut the segments still to do into batches of `batch` IN ROW ORDER
    (fixed by the plan: the same batches whoever runs them, so the cache is the same for every worker
    count, in this process or on Ray), write each `Shard`/`Missing` that `results` yields for them, and
    finalise. Returns the manifest."""
    segment_seconds = SEGMENT_SECONDS.check(segment_seconds)[0]
    out_path = Path(out).expanduser()
    cache = ActivationCache(out_path)
    settings = settings_for(model, segment_seconds, prompt)
    cache.check_settings(settings)  # another model's folder fails before the audio is read
    plan = dataset.plan(data, sources, skipped, model.sample_rate, segment_seconds)
    cache.open_for(manifest_for(model, plan, settings))
    with only_writer(out_path, "the activations folder"):
        return _fill(cache, cache.read_manifest(), plan, batch, results)


def _fill(cache: ActivationCache, manifest: dict, plan: dataset.Plan, batch: int, results: Results) -> dict:
    """`fill` once this process alone writes the cache (its manifest read under the lock)."""
    out_path = cache.root
    if plan.skipped:
        print(f"musicsteer: warning: skipped {len(plan.skipped)} unreadable or missing file(s) "
              f"(listed in {cache.manifest_path}): {_names(plan.skipped)}", file=sys.stderr)
    if manifest.get("complete"):
        print(f"{out_path} is already complete ({len(plan.segments)} segments); nothing to do")
        return manifest
    cache.clean_partial()
    finished = cache.done()
    done = finished | set(manifest.get("missing", []))
    before = len(manifest.get("skipped", []))
    todo = [s for s in plan.segments if s.index not in done]
    batches = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    passes = 0
    # (worker_failures here too: a worker's death is reported wherever the main thread is, and while
    # `results` is suspended at a yield, that is this loop's shard write, outside run_batches' frame)
    with tqdm(total=len(plan.segments), initial=len(plan.segments) - len(todo), unit="seg", desc="extract") as bar, \
            pipeline.worker_failures():
        for result in results(batches, plan):
            if isinstance(result, Shard):
                cache.write_shard(result.index, result.arrays)
                passes += 1
                bar.update(len(result.index))
            else:
                manifest = cache.mark_missing(manifest, result.file_id, result.error, result.rows)
                bar.update(len(result.rows))
    cache.finalise(manifest)
    late = manifest["skipped"][before:]
    if late:
        print(f"musicsteer: warning: {len(late)} file(s) did not decode; their segments are marked missing "
              f"(listed in {cache.manifest_path}): {_names(late)}", file=sys.stderr)
    resumed = f", {len(finished)} segments were already done" if finished else ""
    print(f"extracted {len(plan.segments)} segments of {len(plan.sources)} files, {len(plan.labels)} labels, "
          f"into {out_path} in {passes} forward passes{resumed}; skipped {len(manifest['skipped'])} file(s)")
    return cache.read_manifest()


def run_batches(extractor: Extractor, batches: list[list[dataset.Segment]], sources: dict[str, dataset.Source],
                workers: int) -> Iterator[Shard | Missing]:
    """Each batch's forward pass, in order, as its files are decoded and encoded (probes/pipeline.py,
    `workers` processes). A file that does not decode, or decodes shorter than its planned segments, is
    one `Missing` (its rows among these batches), and its segments leave their batches. A file's codes
    are kept only until the last batch that needs them has run."""
    lm = extractor.lm
    rows = dataset.by_file(seg for group in batches for seg in group)  # files in plan order
    last = {seg.file_id: number for number, group in enumerate(batches) for seg in group}  # its last batch
    in_workers = extractor.encodes_in_workers
    decoded = pipeline.decoded([(sources[f], segs) for f, segs in rows.items()], lm.sample_rate,
                               lm.audio_channels, workers, extractor.encode if in_workers else None)
    codes: dict[str, dict[int, np.ndarray]] = {}  # file -> segment row -> codes
    bad: set[str] = set()
    with pipeline.worker_failures():
        for number, group in enumerate(batches):
            for file_id in dict.fromkeys(s.file_id for s in group):
                if file_id in codes or file_id in bad:
                    continue
                item = next(decoded)  # the next file in order is this one
                if item.segments is None:
                    bad.add(file_id)
                    yield Missing(file_id, item.error or "did not decode", [s.index for s in rows[file_id]])
                    continue
                made = item.segments if in_workers else [extractor.encode(a) for a in item.segments]
                codes[file_id] = {s.index: c for s, c in zip(rows[file_id], made, strict=True)}
            keep = [s for s in group if s.file_id in codes]
            if keep:
                yield Shard([s.index for s in keep], extractor.run([codes[s.file_id][s.index] for s in keep]))
            for file_id in [f for f in codes if last[f] == number]:
                del codes[file_id]


def _names(skipped: list[dict[str, str]]) -> str:
    return ", ".join(s["file"] for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
