"""A toy corpus for the training tests: real WAV files of synthetic audio, laid out as `musicsteer toy corpus`
writes one (OUT/<genre>/*.wav, manifest.csv with every column, instruments.csv, corpus.json), small enough for a
few steps; and the stages' recipes at sizes that train in seconds (TINY_PLAN: every stage of `toy train`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import soundfile as sf
import torch

from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.toy.codec import CodecRecipe
from musicsteer.toy.corpus import COLUMNS
from musicsteer.toy.decoder import DecoderRecipe
from musicsteer.toy.judge import JudgeRecipe
from musicsteer.toy.plan import StagePlan

TINY_CODEC = CodecRecipe(num_filters=4, hidden_size=16, batch_size=2, segment_frames=10, warmup_steps=2,
                         init_frames=2048, eval_clips=2, eval_frames=50, dead_uses=0.05)
TINY_DECODER = DecoderRecipe(hidden_size=32, layers=2, heads=2, ffn_dim=64, dropout=0.0, text_size=16, text_layers=1,
                             text_heads=2, text_ff=32, segment_frames=20, batch_size=4, lr=3e-3, warmup_steps=2,
                             eval_clips=2, render_seconds=0.2)
TINY_JUDGE = JudgeRecipe(audio_width=8, text_size=16, text_layers=1, text_heads=2, text_ff=32, projection=16,
                         batch_size=4, lr=3e-3, warmup_steps=2)
# Every stage of `toy train`; the vectors stage cuts the 1.5 s clips into 0.5 s segments (probe extract's unit).
TINY_PLAN = (StagePlan("codec", steps=3, share=0.6, checkpoint_every=2, recipe=TINY_CODEC),
             StagePlan("judge", steps=4, share=0.2, checkpoint_every=2, eval_every=2, recipe=TINY_JUDGE),
             StagePlan("decoder", steps=4, share=1.0, checkpoint_every=2, recipe=TINY_DECODER),
             StagePlan("vectors", steps=1, share=1.0, recipe={"segment_seconds": 0.5}))
LEADS = {"jazz": "sax", "rock": "guitar"}


def write_corpus(folder: Path, rate: int = 32000, seconds: float = 1.5) -> Path:
    """Two genres of three clips each (a chord led by sax, drums led by guitar), the third of each held out;
    returns `folder`."""
    rows = []
    for genre, kind in (("jazz", "chord"), ("rock", "drums")):
        (folder / genre).mkdir(parents=True)
        for i in range(3):
            path, lead = f"{genre}/{genre}-{i:05d}.wav", LEADS[genre]
            sf.write(folder / path, synthetic_clip(kind, seconds, rate, seed=i), rate)
            rows.append({"path": path, "label": genre, "genre": genre, "instrument": lead, "tempo": "100",
                         "key": "C major", "mood": "Calm", "caption": f"Calm {genre} music led by {lead}.",
                         "split": "train" if i < 2 else "heldout"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(folder / "instruments.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ("path", "label"))
        writer.writeheader()
        writer.writerows({"path": row["path"], "label": row["instrument"]} for row in rows)
    (folder / "corpus.json").write_text(json.dumps({"seed": 0, "version": 1}))
    return folder


def one_thread() -> Iterator[None]:
    """Small tensors: one torch thread is as fast, and the CPU is shared (use as a module fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
