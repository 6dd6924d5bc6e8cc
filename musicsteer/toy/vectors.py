"""The toy's steering vectors: the project's own probe pipeline on the corpus's held-out clips (`--vectors toy`).

For each family (the genre, from manifest.csv; the lead instrument, from instruments.csv) the held-out clips are
listed in RUN/vectors/heldout-FAMILY.csv (path,label; paths relative to it), and the same functions that
`musicsteer probe extract|analyze|train` run turn them into:

    RUN/vectors/acts-FAMILY/     the activations cache (probe extract: resumable)
    RUN/vectors/report-FAMILY/   per-layer k-means ARI/NMI and probe accuracy, Jaccard matrix (probe analyze)
    RUN/vectors/FAMILY.safetensors   one direction per label per layer, its best layer marked (probe train)
    RUN/vectors/tables.md        both families' per-layer tables and best layers
    RUN/vectors/toy_vectors.json written last: the figures (plan.py's "finished" mark)

The probes see the model unconditioned (prompt ''), one segment per 10 s clip, mse probes on the residual stream
with mean pooling: the `probe` commands' defaults. The model is the run's trained MusicGen (RUN/decoder/model).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from ..engine.errors import MusicsteerError
from ..probes.settings import SEGMENT_SECONDS
from .shipped import FAMILIES

# family -> the corpus file that labels every clip with it (corpus.py writes both)
SOURCES = {"genre": "manifest.csv", "instrument": "instruments.csv"}
FACTS = "toy_vectors.json"


def heldout_csv(corpus: Path, family: str, out: Path) -> Path:
    """out/heldout-FAMILY.csv: the held-out clips (manifest.csv's split) with the family's labels, paths relative
    to `out`. Raises MusicsteerError on a corpus without the family's file or without held-out clips."""
    try:
        with open(corpus / "manifest.csv", newline="", encoding="utf-8") as f:
            heldout = {row["path"] for row in csv.DictReader(f) if row["split"] != "train"}
        with open(corpus / SOURCES[family], newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row["path"] in heldout]
    except (OSError, KeyError) as e:
        raise MusicsteerError(f"{corpus} is not a toy corpus with {SOURCES[family]} ({e}); make one with "
                              "`musicsteer toy corpus`") from None
    if not rows:
        raise MusicsteerError(f"{corpus / SOURCES[family]} lists no held-out clips")
    path = out / f"heldout-{family}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for row in rows:
            writer.writerow([os.path.relpath((corpus / row["path"]).resolve(), out.resolve()), row["label"]])
    return path


def make_vectors(corpus: str | os.PathLike, run: str | os.PathLike, model: str | os.PathLike,
                 segment_seconds: float = SEGMENT_SECONDS.default, batch: int = 4, threads: int = 1) -> dict[str, Any]:
    """Probe extract -> analyze -> train for each family (FAMILIES) on the held-out clips, with `model` (a folder
    or name load_model takes), into RUN/vectors. Returns what toy_vectors.json holds: {"steps": 1, "held_out":
    {FAMILY_best_layer, FAMILY_accuracy, ...}, "families": {...}, "seconds"}."""
    import torch

    from ..probes.analyze import analyze
    from ..probes.extract import extract
    from ..probes.train import train

    corpus, out = Path(corpus), Path(run) / "vectors"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    start = time.monotonic()
    families: dict[str, Any] = {}
    for family in FAMILIES:
        data = heldout_csv(corpus, family, out)
        acts, report_dir, vectors = out / f"acts-{family}", out / f"report-{family}", out / f"{family}.safetensors"
        extract(str(data), str(model), str(acts), segment_seconds, batch=batch, device="cpu", dtype="float32")
        report = analyze(str(acts), str(report_dir))
        result, _ = train(str(acts), str(vectors))
        families[family] = {
            "file": vectors.name, "labels": result.labels, "segments": report["segments"], "counts": report["counts"],
            "best_layer": result.best_layer, "best_layer_ari": report["best_layer_ari"],
            "layers": report["layers"],  # per layer: ari, nmi, probe_accuracy (probe train's held-out split)
        }
    held_out = {}
    for family, facts in families.items():
        held_out[f"{family}_best_layer"] = facts["best_layer"]
        held_out[f"{family}_accuracy"] = facts["layers"][facts["best_layer"]]["probe_accuracy"]
    facts = {"steps": 1, "held_out": held_out, "families": families, "model": str(model),
             "seconds": time.monotonic() - start}
    (out / "tables.md").write_text(tables(families), encoding="utf-8")
    (out / FACTS).write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def tables(families: dict[str, Any]) -> str:
    """Markdown: per family, a row per layer (ARI, NMI, probe accuracy) and the best layer."""
    lines = []
    for family, facts in families.items():
        lines += [f"### {family} ({len(facts['labels'])} labels: {', '.join(facts['labels'])}; "
                  f"{facts['segments']} held-out segments)", "", "| layer | ARI | NMI | probe accuracy |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {row['layer']} | {row['ari']:.3f} | {row['nmi']:.3f} | {row['probe_accuracy']:.3f} |"
                  for row in facts["layers"]]
        lines += ["", f"Best layer (probe accuracy): {facts['best_layer']}; highest ARI at layer "
                      f"{facts['best_layer_ari']}.", ""]
    return "\n".join(lines)
