"""Reconstruction losses and metrics of the toy codec: multi-scale log-mel distance, SI-SNR, spectrogram pictures.

The multi-scale mel distance is EnCodec's frequency-domain loss (its paper, §3.4: mel spectrograms at STFT
windows 2^6 .. 2^11 samples, hop a quarter window): here the mean over scales of the L1 distance between
natural-log mel magnitudes floored at 1e-5 (about -100 dB re full scale: silence is not chased). The same
function is the training loss and the held-out metric. Mel filters are HTK triangles (no torchaudio here).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular HTK mel filters from 0 Hz to Nyquist, peak 1."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (mel / 2595.0) - 1.0)

    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(0, to_mel(np.array(sample_rate / 2)), n_mels + 2))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bins[None] - low) / np.maximum(centre - low, 1e-9)
    fall = (high - bins[None]) / np.maximum(high - centre, 1e-9)
    return torch.from_numpy(np.clip(np.minimum(rise, fall), 0, None)).float()


class MultiScaleMel(torch.nn.Module):
    """Log-mel spectrograms at several STFT sizes, and the mean L1 distance between two signals' spectrograms."""

    def __init__(self, sample_rate: int, scales: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
                 n_mels: int = 64, floor: float = 1e-5) -> None:
        super().__init__()
        self.scales, self.floor = tuple(scales), floor
        for n_fft in self.scales:
            mels = min(n_mels, n_fft // 4)  # a 64-sample window has 33 bins: 64 mel bands would be mostly empty
            self.register_buffer(f"filters_{n_fft}", mel_filters(sample_rate, n_fft, mels), persistent=False)
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def log_mel(self, audio: Tensor, n_fft: int) -> Tensor:
        """audio (B, 1, S) or (B, S) -> (B, mels, frames) natural-log mel magnitude."""
        audio = audio.reshape(-1, audio.shape[-1])
        spec = torch.stft(audio, n_fft, hop_length=n_fft // 4, window=getattr(self, f"window_{n_fft}"),
                          center=True, pad_mode="reflect", return_complex=True).abs()
        return torch.log(torch.clamp(getattr(self, f"filters_{n_fft}") @ spec, min=self.floor))

    def forward(self, reference: Tensor, estimate: Tensor, per_item: bool = False) -> Tensor:
        """Mean over scales of the mean |log mel(reference) - log mel(estimate)|: a scalar, or (B,) per item."""
        total = 0.0
        for n_fft in self.scales:
            diff = (self.log_mel(reference, n_fft) - self.log_mel(estimate, n_fft)).abs()
            total = total + (diff.mean(dim=(1, 2)) if per_item else diff.mean())
        return total / len(self.scales)


def si_snr(reference: Tensor, estimate: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant signal-to-noise ratio in dB, per item: (B, ..., S) -> (B,). Both are made zero-mean;
    the estimate is split into its projection on the reference (the target) and the rest (the noise)."""
    ref = reference.reshape(reference.shape[0], -1)
    est = estimate.reshape(estimate.shape[0], -1)
    ref = ref - ref.mean(dim=1, keepdim=True)
    est = est - est.mean(dim=1, keepdim=True)
    target = (est * ref).sum(1, keepdim=True) / (ref.pow(2).sum(1, keepdim=True) + eps) * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(1) + eps) / (noise.pow(2).sum(1) + eps))


def plot_spectrograms(pairs: list[tuple[str, Tensor, Tensor]], mel: MultiScaleMel, png: str | os.PathLike,
                      title: str = "", n_fft: int = 1024, labels: tuple[str, str] = ("original", "round-trip")) -> Path:
    """One row per (name, original (S,), round-trip (S,)): their log-mel spectrograms side by side, same scale
    (the first's); `labels` name the two columns (a held-out clip beside a render, for the decoder)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(pairs), 2, figsize=(8, 1.7 * len(pairs) + 0.4), squeeze=False)
    for row, (name, original, decoded) in zip(axes, pairs, strict=True):
        specs = [mel.log_mel(x.reshape(1, -1).float(), n_fft)[0].numpy() for x in (original, decoded)]
        low, high = max(specs[0].max() - 12.0, math.log(mel.floor)), specs[0].max()  # ~100 dB of range
        for ax, spec, label in zip(row, specs, labels, strict=True):
            ax.imshow(spec, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma")
            ax.set_title(f"{name}: {label}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=72)
    plt.close(fig)
    return Path(png)
