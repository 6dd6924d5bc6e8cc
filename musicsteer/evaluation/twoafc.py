"""Scoring a 2AFC listening test (Table II): per transition, how often listeners chose the steered clip.

Input: one or more answers CSVs exported by listening_test.html (columns trial_id, pair, choice, …;
choice is "steered" or "prompted"). Each row is one trial of one listener; files are pooled.
Per pair: accuracy = k/n (k = steered choices), and an exact binomial test of k against chance
(p = 0.5) with scipy.stats.binomtest. Default two-sided: H1 "listeners prefer one of the two".
The paper does not say which it used; no (k, n) reproduces all its p-values, but for 7 musicians x
6 trials (n = 42) the two-sided test gives 0.0029 and 0.0003 where it prints 0.0028 and 0.0003,
the one-sided 0.0014 and 0.0001. `alternative="greater"` (H1 "steered preferred") is one flag away.
"""

from __future__ import annotations

import csv
from pathlib import Path

from scipy.stats import binomtest

from musicsteer.engine.errors import MusicsteerError, one_line

REQUIRED = ("trial_id", "pair", "choice")
CHOICES = ("steered", "prompted")
ALTERNATIVES = ("two-sided", "greater")


def read_answers(paths: list[str | Path]) -> list[dict]:
    """Every answer row of every file, checked; MusicsteerError names the file and line of a bad one."""
    if not paths:
        raise MusicsteerError("score-2afc needs at least one answers CSV")
    rows: list[dict] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise MusicsteerError(f"answers file not found: {path}")
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:  # a BOM from a spreadsheet is fine
                reader = csv.DictReader(f)
                missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
                if missing:
                    raise MusicsteerError(f"{path} is not a 2AFC answers CSV: no column {', '.join(missing)}")
                for line, row in enumerate(reader, start=2):
                    choice = (row.get("choice") or "").strip().lower()
                    if choice not in CHOICES:
                        raise MusicsteerError(f"{path} line {line}: choice must be steered or prompted, "
                                              f"got {row.get('choice')!r}")
                    pair = (row.get("pair") or "").strip()
                    if not pair:
                        raise MusicsteerError(f"{path} line {line}: empty pair")
                    rows.append({**row, "pair": pair, "choice": choice, "file": str(path)})
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise MusicsteerError(f"cannot read answers file {path}: {one_line(e)}") from None
    if not rows:
        raise MusicsteerError(f"no answers in {', '.join(map(str, paths))}")
    return rows


def score(rows: list[dict], alternative: str = "two-sided") -> dict:
    """{"alternative", "pairs": {pair: {"n", "steered", "accuracy", "p_value"}}, "all": {…}}."""
    if alternative not in ALTERNATIVES:
        raise MusicsteerError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    counts: dict[str, list[int]] = {}
    for row in rows:  # pairs in order of first appearance
        n_k = counts.setdefault(row["pair"], [0, 0])
        n_k[0] += 1
        n_k[1] += row["choice"] == "steered"
    total = [sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())]
    return {"alternative": alternative, "chance": 0.5,
            "pairs": {pair: _test(n, k, alternative) for pair, (n, k) in counts.items()},
            "all": _test(*total, alternative)}


def _test(n: int, k: int, alternative: str) -> dict:
    return {"n": n, "steered": k, "accuracy": k / n, "p_value": float(binomtest(k, n, 0.5, alternative).pvalue)}


def markdown(result: dict) -> str:
    side = "two-sided" if result["alternative"] == "two-sided" else "one-sided (steered > chance)"
    lines = [f"| Transition | Trials | Steered chosen | Accuracy | p ({side} binomial) |", "|---|---|---|---|---|"]
    for pair, r in [*result["pairs"].items(), ("all", result["all"])]:
        label = pair.replace(":", " → ") if pair != "all" else "**all**"
        lines.append(f"| {label} | {r['n']} | {r['steered']} | {r['accuracy']:.3f} | {r['p_value']:.4f} |")
    return "\n".join(lines) + "\n"
