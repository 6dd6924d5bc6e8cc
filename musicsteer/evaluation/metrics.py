"""Table I arithmetic (the change in the target genre's CLAP score, steered vs prompted) and the
effect studies' estimates (a mean with its confidence interval).

For clip i of a transition, s(x) is the CLAP probability of the target genre (softmax over the
label set). Δ_steered,i = s(steered_i) − s(source_i) and Δ_prompted,i = s(prompted_i) − s(source_i):
each continuation is compared with its own source clip (paired). Summaries are the mean and the
sample standard deviation (ddof=1; None for a single clip, where no spread can be estimated).

`estimate` adds a 95 % Student t interval for the mean, mean ± t(0.975, n−1) · s / √n, intersected
with the values' range ([0, 1] for a probability, [−1, 1] for a difference of two). Why t and not a
bootstrap: the effect studies average N ≤ 20 seeds, and at such n the percentile bootstrap of a mean is
known to cover too little (it is about mean ± z · s · √((n−1)/n) / √n: narrower than t, and z < t); the t
interval is exact for normal data and close for means of bounded values at n ≥ 10 unless they pile up
at a bound, where the intersection with the range keeps it honest. It always contains the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import t as student_t

CI_LEVEL = 0.95
CI_METHOD = "student-t"


def summary(values: Sequence[float]) -> dict:
    """{"mean", "std", "n"} of a list of numbers (std: sample std, ddof=1; None when n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(x.std(ddof=1)) if x.size > 1 else None
    return {"mean": float(x.mean()), "std": std, "n": int(x.size)}


def interval(values: Sequence[float], low: float = 0.0, high: float = 1.0,
             level: float = CI_LEVEL) -> list[float] | None:
    """[lower, upper] of the Student t interval for the mean of `values`, within [low, high]; None when
    fewer than two values (no spread to estimate). Equal values give [mean, mean]."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    mean = float(x.mean())
    half = float(student_t.ppf((1 + level) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return [max(low, mean - half), min(high, mean + half)]


def estimate(values: Sequence[float], low: float = 0.0, high: float = 1.0) -> dict:
    """`summary` plus "ci": the 95 % interval for the mean within [low, high] (`interval`; None when n < 2)."""
    return {**summary(values), "ci": interval(values, low, high)}


def transition(source: Sequence[float], steered: Sequence[float], prompted: Sequence[float]) -> dict:
    """One row pair of Table I from per-clip target-genre scores (same clip order in each list)."""
    if not len(source) == len(steered) == len(prompted):
        raise ValueError("source, steered and prompted need one score per clip each")
    src = np.asarray(source, dtype=np.float64)
    out: dict = {"original": summary(src)}
    for arm, scores in (("steered", steered), ("prompted", prompted)):
        modified = np.asarray(scores, dtype=np.float64)
        out[arm] = {"modified": summary(modified), "delta": summary(modified - src),
                    "deltas": [float(d) for d in modified - src]}
    # How often steering moved a clip further toward the target than prompting did (ties: half).
    diff = np.asarray(steered, dtype=np.float64) - np.asarray(prompted, dtype=np.float64)
    out["steered_beats_prompted"] = float((np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / max(1, diff.size))
    return out


def fmt(stat: dict, signed: bool = False, digits: int = 3) -> str:
    """"0.412 ± 0.051" (or "+0.412 ± …"); "–" for no data, no "±" for a single clip."""
    mean = stat.get("mean")
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    std = stat.get("std")
    return text if std is None else f"{text} ± {std:.{digits}f}"


def markdown_table(rows: dict[str, dict], alpha: float, layer: int) -> str:
    """Table I: per transition, the steered and the prompted rows."""
    lines = [
        "| Transition | Condition | Original (target score) | Modified (target score) | Δ CLAP |",
        "|---|---|---|---|---|",
    ]
    for pair, row in rows.items():
        source, target = pair.split(":", 1)
        label = f"{source} → {target}"
        lines.append(f"| {label} | Steered (α={alpha:g}, layer {layer}) | {fmt(row['original'])} | "
                     f"{fmt(row['steered']['modified'])} | {fmt(row['steered']['delta'], signed=True)} |")
        lines.append(f"|  | Prompted | {fmt(row['original'])} | {fmt(row['prompted']['modified'])} | "
                     f"{fmt(row['prompted']['delta'], signed=True)} |")
    return "\n".join(lines) + "\n"
