"""A toy corpus for the training tests: real WAV files of synthetic audio, laid out as `musicsteer toy corpus`
writes one (OUT/<genre>/*.wav, manifest.csv with every column, corpus.json), small enough for a few steps."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import soundfile as sf
import torch

from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.toy.corpus import COLUMNS


def write_corpus(folder: Path, rate: int = 32000, seconds: float = 1.5) -> Path:
    """Two genres of three clips each (a chord, drums), the third of each held out; returns `folder`."""
    rows = []
    for genre, kind in (("jazz", "chord"), ("rock", "drums")):
        (folder / genre).mkdir(parents=True)
        for i in range(3):
            path = f"{genre}/{genre}-{i:05d}.wav"
            sf.write(folder / path, synthetic_clip(kind, seconds, rate, seed=i), rate)
            rows.append({"path": path, "label": genre, "genre": genre, "instrument": "piano", "tempo": "100",
                         "key": "C major", "mood": "Calm", "caption": f"Calm {genre} music led by piano.",
                         "split": "train" if i < 2 else "heldout"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "corpus.json").write_text(json.dumps({"seed": 0, "version": 1}))
    return folder


def one_thread() -> Iterator[None]:
    """Small tensors: one torch thread is as fast, and the CPU is shared (use as a module fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
