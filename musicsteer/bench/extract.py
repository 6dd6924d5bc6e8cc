"""`musicsteer bench --extract N`: `probe extract` of N synthetic files, --workers W against serial, in one run.

The collection (made in a temporary folder, removed after): chord / drums / noise clips
(engine.synthetic) of SECONDS s, stereo FLAC at 44.1 / 48 / 22.05 kHz in turn, so every file is
decoded, mixed to the model's channels and resampled, as a real collection is. Each contender extracts
it into a fresh cache on the one loaded model (plan from headers, decode, forward, shards, finalise),
alternated within every repeat; the report says whether the caches are equal (they must be).
decode_only_s times the decoding alone (serial): the workers take only that off the main process, so
with the model's forward in one process the speedup is at most serial / max(serial - decode, serial / 2)
on 2 cores (`bound_on_2_cores`): on the tiny CPU model the forward (EnCodec + decoder) dominates.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from musicsteer.engine.loading import LoadedModel
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.probes import dataset, pipeline
from musicsteer.probes.cache import KEYS
from musicsteer.probes.extract import cpu_threads, extract_with

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


def run_extract_bench(lm: LoadedModel, files: int, workers: int, repeats: int = 1) -> dict:
    """JSON-ready {"contenders": [...], "ratios": {...}, "caches_equal": bool}: seconds (median of
    `repeats`), files/s and segments/s of serial (--workers 0, the baseline) and --workers `workers`."""
    names = {0: "serial", workers: f"workers={workers}"}
    times: dict[int, list[float]] = {0: [], workers: []}
    with tempfile.TemporaryDirectory(prefix="musicsteer-bench-extract-") as tmp:
        root = Path(tmp)
        write_collection(root / "clips", files)
        sources, skipped = dataset.discover(root / "clips")
        began = time.perf_counter()  # decoding alone, serial: what the workers can take off the main process
        for _ in pipeline.decoded(sources, lm.sample_rate, lm.audio_channels):
            pass
        decode_s = time.perf_counter() - began
        segments = 0
        for repeat in range(repeats):
            for count in times:
                out = root / f"acts-{count}"
                shutil.rmtree(out, ignore_errors=True)
                began = time.perf_counter()
                with cpu_threads(lm):
                    manifest = extract_with(lm, str(root / "clips"), str(out), sources, skipped, SEGMENT_SECONDS,
                                            "", 4, count)
                times[count].append(time.perf_counter() - began)
                segments = len(manifest["segments"])
            if repeat == repeats - 1:
                equal = all(np.array_equal(np.load(root / "acts-0" / f"{k}.npy"),
                                           np.load(root / f"acts-{workers}" / f"{k}.npy")) for k in KEYS)
    contenders = []
    for count, runs in times.items():
        seconds = statistics.median(runs)
        contenders.append({"name": names[count], "workers": count, "seconds": round(seconds, 3),
                           "files_per_s": round(files / seconds, 2), "segments_per_s": round(segments / seconds, 2),
                           "runs_s": [round(t, 3) for t in runs]})
    speedup = contenders[0]["seconds"] / contenders[1]["seconds"]
    serial = contenders[0]["seconds"]
    bound = serial / max(serial - decode_s, serial / 2)  # the model's share (forward, shards) stays serial
    return {"model": lm.name, "files": files, "segments": segments, "file_seconds": SECONDS,
            "segment_seconds": SEGMENT_SECONDS, "repeats": repeats, "contenders": contenders,
            "decode_only_s": round(decode_s, 3),
            "ratios": {f"workers{workers}_vs_serial": round(speedup, 3), "bound_on_2_cores": round(bound, 3)},
            "caches_equal": bool(equal)}
