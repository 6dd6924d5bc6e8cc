"""The effect studies' files (effect.py's numbers in results.json): a CSV and a plot each.

  effect.csv, effect-{source}.png   P(target) vs α per transition, mean and 95 % band over the seeds
  cross_effect.csv/.png             every label's mean P per target and α, and its change from α = 0
  hold.csv/.png                     (--hold-seconds) P(target) along the held continuation
  fusion.csv/.png                   (--fusion) every label's P: fused, each target alone, unsteered
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from musicsteer.engine.files import atomic_write

from .protocol import slug
from .report import plt


def write(out: Path, results: dict) -> list[Path]:
    """Every CSV and plot of the studies results.json holds; returns their paths."""
    paths = [_csv(out / "effect.csv", _curve_rows(results)), _csv(out / "cross_effect.csv", _cross_rows(results))]
    paths += plot_curves(out, results)
    paths.append(plot_cross(out / "cross_effect.png", results))
    if "hold" in results:
        paths += [_csv(out / "hold.csv", _hold_rows(results["hold"])), plot_hold(out / "hold.png", results["hold"])]
    if "fusion" in results:
        paths += [_csv(out / "fusion.csv", _fusion_rows(results["fusion"])),
                  plot_fusion(out / "fusion.png", results["fusion"])]
    return paths


def _stat(stat: dict) -> list:
    """n, mean, ci_low, ci_high of a metrics.estimate ("" where there is none)."""
    low, high = stat["ci"] or ("", "")
    return [stat["n"], stat["mean"], low, high]


def _csv(path: Path, rows: list[list]) -> Path:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return atomic_write(path, lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8"))


def _curve_rows(results: dict) -> list[list]:
    rows = [["source", "target", "alpha", "n", "mean", "ci_low", "ci_high", "delta_mean", "delta_ci_low",
             "delta_ci_high"]]
    for pair, points in results["sweep"].items():
        for p in points:
            rows.append([*pair.split(":", 1), p["alpha"], *_stat(p["target_score"]), *_stat(p["delta"])[1:]])
    return rows


def _cross_rows(results: dict) -> list[list]:
    rows = [["target", "alpha", "label", "n", "mean", "ci_low", "ci_high", "change_mean", "change_ci_low",
             "change_ci_high"]]
    for target, study in results["cross_effect"].items():
        for p in study["points"]:
            for label, stat in p["scores"].items():
                rows.append([target, p["alpha"], label, *_stat(stat), *_stat(p["change"][label])[1:]])
    return rows


def _hold_rows(study: dict) -> list[list]:
    rows = [["group", "name", "start_s", "end_s", "n", "mean", "ci_low", "ci_high"]]
    for group in ("pairs", "targets"):
        for name, curve in study[group].items():
            for p in curve["points"]:
                rows.append([group.removesuffix("s"), name, p["start"], p["end"], *_stat(p["target_score"])])
    return rows


def _fusion_rows(study: dict) -> list[list]:
    rows = [["fusion", "arm", "label", "n", "mean", "ci_low", "ci_high"]]
    for name, fusion in study.items():
        for arm, scores in fusion["arms"].items():
            rows.extend([name, arm, label, *_stat(stat)] for label, stat in scores.items())
    return rows


def _band(ax, x: list[float], stats: list[dict], colour: str, label: str) -> None:
    """Mean line with its 95 % band (no band where an interval is missing: a single seed)."""
    ax.plot(x, [s["mean"] for s in stats], color=colour, marker="o", markersize=3, label=label)
    if all(s["ci"] for s in stats):
        ax.fill_between(x, [s["ci"][0] for s in stats], [s["ci"][1] for s in stats], color=colour, alpha=0.2,
                        linewidth=0)


def plot_curves(out: Path, results: dict) -> list[Path]:
    """One figure per source genre: the judge's P(target) vs α for each target steered toward from it,
    mean over the seeds with its 95 % band; dashed, the same target's P in the prompted arm."""
    by_source: dict[str, list[str]] = {}
    for pair in results["sweep"]:
        by_source.setdefault(pair.split(":", 1)[0], []).append(pair)
    paths = []
    n = results["settings"]["protocol"]["n"]
    for source, pairs in by_source.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
        for k, pair in enumerate(pairs):
            points, colour = results["sweep"][pair], f"C{k % 10}"
            target = pair.split(":", 1)[1]
            _band(ax, [p["alpha"] for p in points], [p["target_score"] for p in points], colour, f"→ {target}")
            ax.axhline(results["transitions"][pair]["prompted"]["modified"]["mean"], color=colour, linestyle="--",
                       linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("steering strength α")
        ax.set_ylabel("judge's P(target)")
        ax.set_title(f"From {source}: P(target) vs α (mean, 95 % CI, N = {n}; dashed: prompted)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        paths.append(_save(fig, out / f"effect-{slug(source)}.png"))
    return paths


def plot_cross(path: Path, results: dict) -> Path:
    """Per α (columns): heat maps, targets × labels, of the mean P(label) when steering toward the target
    (top) and of its change from α = 0 (bottom, red up, blue down)."""
    study = results["cross_effect"]
    labels, targets = results["settings"]["labels"], list(study)
    alphas = [p["alpha"] for p in next(iter(study.values()))["points"]]
    grid = {kind: np.array([[[p[kind][label]["mean"] for label in labels] for p in study[t]["points"]]
                            for t in targets]) for kind in ("scores", "change")}  # (targets, alphas, labels)
    reach = max(float(np.abs(grid["change"]).max()), 1e-6)
    cols = len(alphas)
    fig, axes = plt.subplots(2, cols, figsize=(1.6 + 0.55 * len(labels) * cols, 2.2 + 1.0 * len(targets)),
                             dpi=110, squeeze=False, layout="constrained")
    for row, (kind, cmap, low, high) in enumerate((("scores", "viridis", 0, 1), ("change", "RdBu_r", -reach, reach))):
        for col, alpha in enumerate(alphas):
            ax, values = axes[row][col], grid[kind][:, col]
            image = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto")
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, f"{v:+.2f}" if kind == "change" else f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if kind == "change" or v > 0.5 else "white")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(targets)), targets if col == 0 else [""] * len(targets), fontsize=7)
            ax.set_title(f"α = {alpha:g}" + ("" if kind == "scores" else ": change"), fontsize=8)
        fig.colorbar(image, ax=axes[row].tolist(), shrink=0.9, label="P(label)" if kind == "scores" else "Δ P(label)")
    fig.suptitle("Steering toward a target (rows): the judge's mean P(label) (top) and its change from α = 0 "
                 "(bottom)", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_hold(path: Path, study: dict) -> Path:
    """P(target) along the held continuation, one line per target (every source), mean and 95 % band."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for k, (target, curve) in enumerate(study["targets"].items()):
        mids = [(p["start"] + p["end"]) / 2 for p in curve["points"]]
        _band(ax, mids, [p["target_score"] for p in curve["points"]], f"C{k % 10}", f"→ {target} (n = {curve['n']})")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, study["seconds"])
    ax.set_xlabel(f"seconds of the held continuation (spans of {study['window']:g} s)")
    ax.set_ylabel("judge's P(target)")
    ax.set_title(f"Hold drift: α = {study['alpha']:g} held {study['seconds']:g} s (mean, 95 % CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_fusion(path: Path, study: dict) -> Path:
    """Per fusion: every label's mean P (95 % CI bars) for the fused clips, each target alone, unsteered."""
    fig, axes = plt.subplots(1, len(study), figsize=(5.5 * len(study), 3.8), dpi=110, squeeze=False)
    for ax, (name, fusion) in zip(axes[0], study.items(), strict=True):
        arms = list(fusion["arms"])
        labels = list(fusion["arms"][arms[0]])
        width = 0.8 / len(arms)
        for k, arm in enumerate(arms):
            stats = [fusion["arms"][arm][label] for label in labels]
            means = [s["mean"] for s in stats]
            errors = [[m - (s["ci"] or (m, m))[0] for m, s in zip(means, stats, strict=True)],
                      [(s["ci"] or (m, m))[1] - m for m, s in zip(means, stats, strict=True)]]
            ax.bar([i + (k - (len(arms) - 1) / 2) * width for i in range(len(labels))], means, width, yerr=errors,
                   capsize=2, color=f"C{k % 10}", label=arm)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("judge's P(label)")
        source, targets = name.split(":", 1)
        ax.set_title(f"From {source} toward {targets.replace('+', ' + ')} (α = {fusion['alpha']:g})", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

