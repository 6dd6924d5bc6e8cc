"""Hold drift's scoring: a held continuation's audio cut into consecutive spans, each scored by CLAP.

The spans cover the held seconds from the end of the source clip: [0, w), [w, 2w), …; a remainder of
at least half a window is a last, shorter span, a shorter one joins the span before it (CLAP would
hear a few frames as noise). A span longer than the judge's window (10 s for the CLAPs here) is cropped
to it from its start, as every clip is (clap.py); a shorter one is repeat-padded by its extractor.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from musicsteer.engine.audio_io import read_audio

from .clap import ClapScorer
from .clips import Clip


def spans(seconds: float, window: float) -> list[tuple[float, float]]:
    """Consecutive (start, end) spans in seconds covering [0, seconds) (seconds, window > 0)."""
    count = max(1, int(seconds // window))
    if seconds - count * window >= window / 2:
        count += 1
    return [(k * window, seconds if k == count - 1 else (k + 1) * window) for k in range(count)]


def score_spans(scorer: ClapScorer, clips: list[Clip], frame_rate: int, cuts: list[tuple[float, float]],
                labels: list[str]) -> dict[str, np.ndarray]:
    """{clip name: (spans, labels) CLAP probabilities} of held clips; a span's times count from the end of
    the clip's source part (its prompt frames)."""
    out = {}
    rate = scorer.sample_rate
    for clip in tqdm(clips, desc="CLAP hold", unit="clip", leave=False):
        audio = read_audio(clip.wav, rate, 1)[0]  # one clip at a time: a minute at 48 kHz is 11 MB
        offset = clip.prompt_frames / frame_rate
        pieces = [audio[round((offset + start) * rate): round((offset + end) * rate)][: scorer.max_samples]
                  for start, end in cuts]
        out[clip.job.name] = scorer.scores(pieces, labels)
    return out
