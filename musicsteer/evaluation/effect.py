"""The effect studies, from the clips' CLAP scores: the α curve, the cross-effect, hold drift, fusion,
and the α = 0 exactness check.

Every number is a mean over the N clip indices (seeds) of a transition, or over every (source, index)
steered toward one target, with its 95 % interval (metrics.estimate: Student t, within [0, 1] for a
probability, [−1, 1] for a difference). A score is the judge's P(label): the CLAP softmax over the label
set. `Rows` gives the scores of one arm, (N, labels), in clip-index order, so two arms of a transition are
paired clip by clip (same source clip, same sampling seed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .metrics import estimate
from .protocol import Protocol, fusion_name

# (kind, pair, alpha) -> (N, labels) scores of that arm, clip index by clip index; alpha None for unsteered
Rows = Callable[[str, str, float | None], np.ndarray]


def by_label(rows: np.ndarray, labels: list[str], low: float = 0.0) -> dict[str, dict]:
    """{label: estimate of its column} of (clips, labels) scores (low −1: differences)."""
    return {label: estimate(rows[:, j], low) for j, label in enumerate(labels)}


def sweep(protocol: Protocol, labels: list[str], rows: Rows, source_rows: Callable[[str], np.ndarray]) -> dict:
    """Per transition, per α of the sweep (0 first): P(target) of the steered clips, its change from the
    source clip (Δ, paired), and every label's mean P, each with its interval."""
    out = {}
    for source, target in protocol.pairs:
        pair, col = f"{source}:{target}", labels.index(target)
        src = source_rows(pair)[:, col]
        points = []
        for alpha in protocol.sweep:
            steered = rows("steered", pair, alpha)
            points.append({"alpha": alpha, "target_score": estimate(steered[:, col]),
                           "delta": estimate(steered[:, col] - src, -1.0), "scores": by_label(steered, labels)})
        out[pair] = points
    return out


def cross_effect(protocol: Protocol, labels: list[str], rows: Rows) -> dict:
    """Per target B and α: every label's mean P over all clips steered toward B (every source, every
    index), and its change from α = 0 for the same clips (paired): what steering toward B does to
    each genre's score, B's own included."""
    out = {}
    for target in dict.fromkeys(t for _, t in protocol.pairs):
        pairs = [f"{s}:{t}" for s, t in protocol.pairs if t == target]
        base = np.concatenate([rows("steered", pair, 0.0) for pair in pairs])
        points = []
        for alpha in protocol.sweep:
            steered = np.concatenate([rows("steered", pair, alpha) for pair in pairs])
            points.append({"alpha": alpha, "n": len(steered), "scores": by_label(steered, labels),
                           "change": by_label(steered - base, labels, -1.0)})
        out[target] = {"sources": [p.split(":", 1)[0] for p in pairs], "points": points}
    return out


def hold(protocol: Protocol, labels: list[str], windows: Callable[[str], np.ndarray],
         spans: list[tuple[float, float]]) -> dict:
    """Hold drift: per transition and per target (every source), per span of the held continuation,
    P(target) and every label's mean P; and the drift, P(target) in the last span − in the first (paired).
    `windows(pair)`: (N, spans, labels) scores of that transition's hold clips."""
    def curve(scores: np.ndarray, col: int) -> dict:
        points = [{"start": start, "end": end, "target_score": estimate(scores[:, w, col]),
                   "scores": by_label(scores[:, w], labels)} for w, (start, end) in enumerate(spans)]
        return {"n": len(scores), "points": points, "drift": estimate(scores[:, -1, col] - scores[:, 0, col], -1.0)}

    per_pair = {f"{s}:{t}": windows(f"{s}:{t}") for s, t in protocol.pairs}
    targets = dict.fromkeys(t for _, t in protocol.pairs)
    return {"alpha": protocol.alpha, "seconds": protocol.hold_seconds, "window": protocol.hold_window,
            "spans": [list(span) for span in spans],
            "pairs": {pair: curve(scores, labels.index(pair.split(":", 1)[1])) for pair, scores in per_pair.items()},
            "targets": {t: curve(np.concatenate([w for p, w in per_pair.items() if p.split(":", 1)[1] == t]),
                                 labels.index(t)) for t in targets}}


def fusion(protocol: Protocol, labels: list[str], rows: Rows) -> dict:
    """Per fusion SOURCE:A+B at the main α: every label's mean P for the fused clips, A alone, B alone
    and the unsteered continuation (all from the same source clips and seeds), and how much the
    fusion keeps of each alone: P_fused(A) − P_A-alone(A) and P_fused(B) − P_B-alone(B), paired."""
    out = {}
    alpha = protocol.alpha
    for source, a, b in protocol.fusions:
        name = fusion_name(source, a, b)
        fused = rows("fused", name, alpha)
        alone = {t: rows("steered", f"{source}:{t}", alpha) for t in (a, b)}
        arms = {"fused": fused, **{f"{t} alone": alone[t] for t in (a, b)},
                "unsteered": rows("unsteered", f"{source}:{a}", None)}
        out[name] = {"source": source, "targets": [a, b], "alpha": alpha, "mix": {a: 1.0, b: 1.0},
                     "arms": {arm: by_label(scores, labels) for arm, scores in arms.items()},
                     "fused_minus_alone": {t: estimate(fused[:, labels.index(t)] - alone[t][:, labels.index(t)], -1.0)
                                           for t in (a, b)}}
    return out


def alpha0_check(protocol: Protocol, codes: Callable[[str, str, float | None], list[np.ndarray]]) -> dict:
    """Every α = 0 steered clip against the unsteered continuation of the same transition and index
    (same text, seed, source codes, batch shape): their codes (K, frames) must be equal.
    `codes(kind, pair, alpha)` -> N arrays (K, frames), in clip-index order."""
    differ = []
    checked = 0
    for source, target in protocol.pairs:
        pair = f"{source}:{target}"
        zero, plain = codes("steered", pair, 0.0), codes("unsteered", pair, None)
        for i in range(protocol.n):
            checked += 1
            if zero[i].shape != plain[i].shape or not np.array_equal(zero[i], plain[i]):
                differ.append(f"{pair} #{i}")
    return {"clips": checked, "identical": checked - len(differ), "differ": differ[:20], "ok": not differ}
