"""The 2AFC listening test: trials, and a self-contained HTML page that runs them.

One trial per transition and source clip: the steered clip (main α) against the prompted one,
from the same start. The trial order and each trial's A/B order are drawn from a seeded RNG and
stored (manifest.json and the page), so every listener of one page hears the same sequence and an
answers CSV can always be traced back. The page needs no network: audio files are referenced
relative to it (keep it next to clips/), answers stay in the page until exported as CSV through a
Blob download link; replay is allowed (plain <audio> controls).
"""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from urllib.parse import quote

from .page import PAGE

CSV_COLUMNS = ("trial_id", "pair", "clip", "choice", "order", "position", "plays_a", "plays_b", "participant")


def make_trials(pairs: dict[str, list[tuple[str, str]]], seed: int) -> list[dict]:
    """pairs: {"rock:jazz": [(steered_wav, prompted_wav), …]} with paths relative to the page.
    Returns the shuffled trials, each with A/B assigned ("order": "steered-first" means A is steered)."""
    rng = random.Random(seed)
    trials = [(pair, i, steered, prompted)
              for pair, clips in pairs.items() for i, (steered, prompted) in enumerate(clips)]
    rng.shuffle(trials)
    out = []
    for number, (pair, i, steered, prompted) in enumerate(trials, start=1):
        steered_first = rng.random() < 0.5
        a, b = (steered, prompted) if steered_first else (prompted, steered)
        out.append({"trial_id": number, "pair": pair, "clip": i, "a": a, "b": b,
                    "order": "steered-first" if steered_first else "prompted-first"})
    return out


def write_page(path: Path, trials: list[dict], title: str = "musicsteer listening test") -> Path:
    """Write the page; audio paths are URL-quoted so any file name loads from file:// and http://."""
    data = [{**t, "a": quote(t["a"]), "b": quote(t["b"])} for t in trials]
    # "</" must not appear inside a <script> block: escape the slash (still valid JSON).
    payload = json.dumps({"trials": data, "columns": CSV_COLUMNS}).replace("</", "<\\/")
    text = PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    path.write_text(text, encoding="utf-8")
    return path
