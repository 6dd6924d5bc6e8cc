"""The two figures of `probe analyze`: metrics over layers, and the cluster-vs-label Jaccard matrix.

matplotlib is imported here only, with the Agg backend, so no display is needed and the rest of
the CLI never pays for importing it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on a server without a display
    import matplotlib.pyplot as plt

    return plt


def plot_layers(ari: list[float], nmi: list[float], accuracy: list[float], chance: float, path: Path,
                title: str) -> Path:
    plt = _pyplot()
    layers = np.arange(len(ari))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(layers) + 3), 4))
    ax.plot(layers, ari, marker="o", label="k-means ARI")
    ax.plot(layers, nmi, marker="s", label="k-means NMI")
    ax.plot(layers, accuracy, marker="^", label="probe accuracy (held-out)")
    ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance accuracy")
    ax.set_xlabel("layer")
    ax.set_ylabel("score")
    ax.set_ylim(min(-0.05, min(ari) - 0.05), 1.05)
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_jaccard(matrix: np.ndarray, clusters: list[str], labels: list[str], path: Path, title: str) -> Path:
    plt = _pyplot()
    size = 1.0 + 0.7 * max(len(labels), len(clusters))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(clusters)), clusters)
    ax.set_xlabel("label")
    ax.set_ylabel("k-means cluster")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black",
                fontsize="small")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Jaccard")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
