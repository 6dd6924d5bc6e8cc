"""`musicsteer bench --extract N`: `probe extract` of N synthetic files, --workers W against serial, in one run.

The collection (made in a temporary folder, removed after): chord / drums / noise clips
(engine.synthetic) of SECONDS s, stereo FLAC at 44.1 / 48 / 22.05 kHz in turn, so every file is
decoded, mixed to the model's channels and resampled, as a real collection is. Each contender extracts
it into a fresh cache on the one loaded model (plan from headers, decode, forward, shards, finalise),
alternated within every repeat; the report says whether the caches are equal (they must be).
worker_share_s times, serially, what the workers take off the main process (decode, resample, cut and,
the model being on the CPU, EnCodec's encode of each segment): with the decoder's forward in one
process the speedup is at most serial / max(serial - worker_share, serial / 2) on 2 cores
(`bound_on_2_cores`).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from musicsteer.engine.loading import LoadedModel, dtype_name
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.probes import dataset, pipeline
from musicsteer.probes.cache import KEYS
from musicsteer.probes.extract import Extractor, cpu_threads, extract_with

KINDS = ("chord", "drums", "noise")
RATES = (44100, 48000, 22050)
SECONDS = 4.0
SEGMENT_SECONDS = 2.0


def write_collection(folder: Path, files: int) -> None:
    """`files` stereo FLAC clips, one sub-folder per kind."""
    for i in range(files):
        kind, rate = KINDS[i % len(KINDS)], RATES[(i // len(KINDS)) % len(RATES)]
        mono = synthetic_clip(kind, SECONDS, rate, i)
        (folder / kind).mkdir(parents=True, exist_ok=True)
        sf.write(folder / kind / f"{i:04d}.flac", np.stack([mono, mono[::-1]], axis=1), rate)


def run_extract_bench(lm: LoadedModel, files: int, workers: int, repeats: int = 1, ray: str | None = None) -> dict:
    """JSON-ready {"contenders": [...], "ratios": {...}, "caches_equal": bool}: seconds (median of
    `repeats`), files/s and segments/s of serial (--workers 0, the baseline), --workers `workers`, and,
    with `ray` (an address, "" = local), `--ray` with its actors' start and model loads timed (joining
    or starting the cluster, once, is not)."""
    runs: dict[str, Callable[[str, list, list], dict]] = {
        "serial": lambda out, sources, skipped: extract_with(lm, clips, out, sources, skipped, SEGMENT_SECONDS,
                                                             "", 4, 0),
        f"workers={workers}": lambda out, sources, skipped: extract_with(lm, clips, out, sources, skipped,
                                                                         SEGMENT_SECONDS, "", 4, workers),
    }
    if ray is not None:
        from musicsteer import cluster
        from musicsteer.probes.extract_ray import extract_on_ray

        cluster.connect(ray)
        runs["ray"] = lambda out, sources, skipped: extract_on_ray(
            ray, lm.name, str(lm.device), dtype_name(lm.dtype), clips, out, sources, skipped,
            SEGMENT_SECONDS, "", 4, 0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="musicsteer-bench-extract-") as tmp:
        root = Path(tmp)
        clips = str(root / "clips")
        write_collection(root / "clips", files)
        sources, skipped = dataset.discover(root / "clips")
        share_s = _worker_share(lm, clips, sources, skipped)
        segments = 0
        for _repeat in range(repeats):
            for name, run in runs.items():
                out = root / f"acts-{name}"
                shutil.rmtree(out, ignore_errors=True)
                began = time.perf_counter()
                with cpu_threads(lm):
                    manifest = run(str(out), sources, skipped)
                times[name].append(time.perf_counter() - began)
                segments = len(manifest["segments"])
        equal = all(np.array_equal(np.load(root / "acts-serial" / f"{key}.npy"),
                                   np.load(root / f"acts-{name}" / f"{key}.npy")) for key in KEYS for name in runs)
    contenders = []
    for name, taken in times.items():
        seconds = statistics.median(taken)
        contenders.append({"name": name, "workers": workers if name.startswith("workers") else 0,
                           "seconds": round(seconds, 3), "files_per_s": round(files / seconds, 2),
                           "segments_per_s": round(segments / seconds, 2), "runs_s": [round(t, 3) for t in taken]})
    serial = contenders[0]["seconds"]
    bound = serial / max(serial - share_s, serial / 2)  # the model's share (forward, shards) stays serial
    ratios = {f"{c['name'].replace('=', '')}_vs_serial": round(serial / c["seconds"], 3) for c in contenders[1:]}
    return {"model": lm.name, "files": files, "segments": segments, "file_seconds": SECONDS,
            "segment_seconds": SEGMENT_SECONDS, "repeats": repeats, "contenders": contenders,
            "worker_share_s": round(share_s, 3), "ratios": {**ratios, "bound_on_2_cores": round(bound, 3)},
            "caches_equal": bool(equal)}


def _worker_share(lm: LoadedModel, clips: str, sources: list[dataset.Source], skipped: list) -> float:
    """Seconds, in this process, of what --workers takes off the main process: every planned file decoded,
    cut and (the model on the CPU) encoded, exactly as `run_batches` hands it to the pipeline."""
    plan = dataset.plan(clips, sources, skipped, lm.sample_rate, SEGMENT_SECONDS)
    extractor = Extractor(lm, "")
    jobs = [(plan.sources[f], segments) for f, segments in dataset.by_file(plan.segments).items()]
    began = time.perf_counter()
    with cpu_threads(lm):
        for _ in pipeline.decoded(jobs, lm.sample_rate, lm.audio_channels, 0,
                                  extractor.encode if extractor.encodes_in_workers else None):
            pass
    return time.perf_counter() - began
