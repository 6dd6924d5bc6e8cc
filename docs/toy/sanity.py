"""Sanity checks of a rendered toy corpus (docs/toy.md): per-genre features, a simple genre classifier, a figure.

    python3 docs/toy/sanity.py /tmp/toy-corpus [docs/toy/spectrograms.png]

Features per clip: log-mel (64 bands) mean and standard deviation over time, spectral centroid, onset density
(spectral-flux peaks a second). A standardised logistic regression is trained on the manifest's train split and
scored on its held-out clips, for the genre and for the lead instrument; 5-fold cross-validation over all clips too.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import find_peaks, stft
from transformers.audio_utils import mel_filter_bank

RATE, N_FFT, HOP = 32000, 1024, 320
MEL = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=64, min_frequency=30, max_frequency=16000,
                      sampling_rate=RATE, norm="slaney", mel_scale="slaney")


def features(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    audio, _ = sf.read(path, dtype="float32")
    _, _, spec = stft(audio, RATE, nperseg=N_FFT, noverlap=N_FFT - HOP)
    power = np.abs(spec) ** 2
    mel = np.log10(MEL.T @ power + 1e-8)  # (64, frames)
    freqs = np.linspace(0, RATE / 2, power.shape[0])
    centroid = float(np.mean((freqs[:, None] * power).sum(0) / (power.sum(0) + 1e-12)))
    flux = np.maximum(np.diff(mel, axis=1), 0).sum(0)
    peaks, _ = find_peaks(flux, height=np.mean(flux) + np.std(flux), distance=5)
    stats = {"rms": float(np.sqrt(np.mean(audio**2))), "centroid_hz": centroid, "onsets_per_s": len(peaks) / 10}
    vector = np.concatenate([mel.mean(1), mel.std(1), [centroid / 1000, stats["onsets_per_s"]]])
    return vector, mel, stats


def main(root: Path, figure: Path | None) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = list(csv.DictReader((root / "manifest.csv").open()))
    done = [features(root / r["path"]) for r in rows]
    x = np.stack([d[0] for d in done])
    train = np.array([r["split"] == "train" for r in rows])
    for genre in sorted({r["genre"] for r in rows}):
        mine = [d[2] for d, r in zip(done, rows, strict=True) if r["genre"] == genre]
        print(genre, {k: round(float(np.mean([m[k] for m in mine])), 3) for k in mine[0]})
    for column in ("genre", "instrument"):
        y = np.array([r[column] for r in rows])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        model.fit(x[train], y[train])
        held = float(np.mean(model.predict(x[~train]) == y[~train]))
        folds = cross_val_score(model, x, y, cv=5)
        print(f"{column}: held-out accuracy {held:.3f} ({(~train).sum()} clips); 5-fold {folds.mean():.3f}")
    if figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        genres = sorted({r["genre"] for r in rows})
        fig, axes = plt.subplots(1, len(genres), figsize=(10, 2.4), dpi=56, sharey=True)
        for ax, genre in zip(axes, genres, strict=True):
            i = next(i for i, r in enumerate(rows) if r["genre"] == genre)
            ax.imshow(done[i][1], origin="lower", aspect="auto", extent=(0, 10, 0, 64), cmap="magma")
            ax.set_title(f"{genre}: {rows[i]['instrument']}, {rows[i]['tempo']} BPM", fontsize=9)
            ax.set_xlabel("seconds", fontsize=8)
        axes[0].set_ylabel("mel band", fontsize=8)
        fig.tight_layout()
        fig.savefig(figure)
        print("figure:", figure)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
