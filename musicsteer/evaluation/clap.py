"""CLAP zero-shot genre scores, as the paper computes them (§IV-B).

The paper used transformers' zero-shot-audio-classification pipeline with laion/clap-htsat-unfused.
That pipeline computes, for one audio clip and candidate labels, `softmax(logits_per_audio)` of
`ClapModel` over the label texts `hypothesis_template.format(label)`, with the default template
"This is a sound of {}." — the paper names no other, so that is our default (`--template`). We run
the same model call directly (batched, no pipeline) so the numbers are the pipeline's.

Audio: mono (a stereo clip is averaged), resampled from the WAV's rate to the feature extractor's
rate (48 kHz) with soxr HQ. CLAP's feature extractor crops audio longer than its window
(10 s for laion/clap-htsat-unfused) at a *random* offset; we crop to the first window ourselves so
scores are deterministic. Shorter audio is repeat-padded by the extractor, as in the pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, ClapModel, ClapProcessor

from musicsteer.engine.audio_io import read_audio
from musicsteer.engine.errors import MusicsteerError, one_line, shown
from musicsteer.engine.loading import check_model_folder
from musicsteer.engine.tiny import no_progress_bars

from .protocol import CLAP_BATCH, CLAP_TEMPLATE, check_clap_template
from .tiny_clap import ensure_tiny_clap

DEFAULT_CLAP = "laion/clap-htsat-unfused"
PIPELINE_TEMPLATE = CLAP_TEMPLATE  # transformers' zero-shot-audio-classification default




def _locate(spec: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only) for "tiny", "toy" (the judge shipped in the package,
    musicsteer/toy/judge.py; one line if none is shipped yet), a folder or a hub id."""
    if spec == "tiny":
        return str(ensure_tiny_clap()), True
    if spec == "toy":
        from musicsteer.toy.shipped import shipped

        return str(shipped("judge")), True
    path = Path(spec).expanduser()
    try:
        found = path.exists()
    except OSError as e:  # a name too long for the file system, a folder we may not enter
        raise MusicsteerError(f"cannot use --clap {shown(spec)}: {e.strerror or e}") from None
    if found:
        check_model_folder(spec, path, "clap", "CLAP")
        return str(path), True
    if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise MusicsteerError(f"CLAP model not found: no folder {shown(spec)}")
    # Private helpers of the MusicGen loader, reused so CLAP fails as fast and clearly offline.
    from musicsteer.engine.loading import _hub_reachable, _in_hub_cache

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline and _hub_reachable():
        return spec, False
    if not _in_hub_cache(spec):
        raise MusicsteerError(f"CLAP model {shown(spec)} not found: not in the hub cache and the hub is unreachable "
                              "(use a local folder made with save_pretrained, --clap toy or --clap tiny)")
    return spec, True


class ClapScorer:
    """Zero-shot scores of audio clips over a fixed label set."""

    def __init__(self, spec: str, template: str = PIPELINE_TEMPLATE, batch_size: int = CLAP_BATCH.default) -> None:
        check_clap_template(template)  # exactly one bare {}: scores() formats it with the label alone
        CLAP_BATCH.check(batch_size)
        source, local_only = _locate(spec)
        try:
            with no_progress_bars():
                self.processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
                # float32 whatever the file holds: from_pretrained keeps a checkpoint's dtype (the toy judge ships
                # float16), and CPU scoring in float16 is slow where it runs at all
                self.model = ClapModel.from_pretrained(source, local_files_only=local_only, dtype=torch.float32)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise MusicsteerError(f"could not load CLAP model {shown(spec)}: {one_line(e)}") from None
        if not isinstance(self.processor, ClapProcessor):
            raise MusicsteerError(f"{shown(spec)} has no CLAP processor (found {type(self.processor).__name__})")
        self.model = self.model.eval()
        self.name, self.device, self.template, self.batch_size = spec, torch.device("cpu"), template, batch_size
        features = self.processor.feature_extractor
        self.sample_rate = int(features.sampling_rate)
        self.max_samples = int(features.nb_max_samples)

    def to(self, device: torch.device) -> ClapScorer:
        self.model, self.device = self.model.to(device), device
        return self

    def load(self, path: Path, last_seconds: float | None = None) -> np.ndarray:
        """A WAV as the model hears it: mono at its rate, at most its window (from the start of
        the part scored; `last_seconds` scores only the end of the file, the continuation)."""
        audio = read_audio(path, self.sample_rate, 1, max_seconds=last_seconds)[0]
        return audio[: self.max_samples]

    @torch.no_grad()
    def scores(self, audios: list[np.ndarray], labels: list[str]) -> np.ndarray:
        """(clips, labels) probabilities: each row sums to 1 over `labels`."""
        texts = [self.template.format(label) for label in labels]
        rows = []
        for start in range(0, len(audios), self.batch_size):
            batch = audios[start : start + self.batch_size]
            inputs = self.processor(text=texts, audio=batch, sampling_rate=self.sample_rate,
                                    return_tensors="pt", padding=True).to(self.device)
            logits = self.model(**inputs).logits_per_audio  # (clips, labels), logit_scale · cosine
            rows.append(logits.float().softmax(dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(labels)))
