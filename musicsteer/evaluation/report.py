"""Writing the results: Table I as Markdown, everything as JSON, and the α-sweep plot (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from musicsteer.engine.files import atomic_write  # noqa: E402

from .metrics import markdown_table  # noqa: E402


def write_json(path: Path, data: dict) -> Path:
    # An interrupted run never leaves half a results file.
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n",
                                                         encoding="utf-8"))


def write_table(path: Path, results: dict) -> Path:
    settings = results["settings"]
    header = (f"# CLAP target-genre score change, steered vs prompted (paper Table I)\n\n"
              f"Model `{settings['model']}`, CLAP `{settings['clap']}`, template \"{settings['template']}\", "
              f"labels {', '.join(settings['labels'])}; N = {settings['protocol']['n']} clips per transition; "
              f"mean ± sample std (ddof=1). Δ = target score of the continuation − target score of its "
              f"source clip.\n\n")
    table = markdown_table(results["transitions"], settings["protocol"]["alpha"], settings["layer"])
    path.write_text(header + table, encoding="utf-8")
    return path


def plot_sweep(path: Path, results: dict) -> Path:
    """Mean target-genre score of the steered continuations vs α, one line per transition, with the
    prompted baseline (dashed) and the source clips (dotted) of the same colour for reference."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for n, (pair, sweep) in enumerate(results["sweep"].items()):
        colour = f"C{n % 10}"
        alphas = [point["alpha"] for point in sweep]
        means = [point["target_score"]["mean"] for point in sweep]
        stds = [point["target_score"]["std"] or 0.0 for point in sweep]
        label = pair.replace(":", " → ")
        ax.errorbar(alphas, means, yerr=stds, color=colour, marker="o", capsize=3, label=f"{label} steered")
        row = results["transitions"][pair]
        ax.axhline(row["prompted"]["modified"]["mean"], color=colour, linestyle="--", linewidth=1,
                   label=f"{label} prompted")
        ax.axhline(row["original"]["mean"], color=colour, linestyle=":", linewidth=1, label=f"{label} source")
    ax.set_xlabel("steering strength α")
    ax.set_ylabel("CLAP score of the target genre")
    ax.set_title("Target-genre score vs steering strength (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
