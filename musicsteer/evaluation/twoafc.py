"""Scoring a 2AFC listening test (Table II): per transition, how often listeners chose the steered clip.

Input: one or more answers CSVs exported by listening_test.html (columns trial_id, pair, choice, …;
choice is "steered" or "prompted"). Each row is one trial of one listener; files are pooled, each
listener's answer to a trial counted once (`unique`: a browser's second download of the same answers,
`answers-alice (1).csv`, which a glob picks up beside the first, would otherwise shrink the p-values).
Per pair: accuracy = k/n (k = steered choices), and an exact binomial test of k against chance
(p = 0.5) with scipy.stats.binomtest. Default two-sided: H1 "listeners prefer one of the two".
The paper does not say which it used; no (k, n) reproduces all its p-values, but for 7 musicians x
6 trials (n = 42) the two-sided test gives 0.0029 and 0.0003 where it prints 0.0028 and 0.0003,
the one-sided 0.0014 and 0.0001. `alternative="greater"` (H1 "steered preferred") is one flag away.
"""

from __future__ import annotations

import csv
import sys
import unicodedata
from pathlib import Path

from scipy.stats import binomtest

from musicsteer.engine.errors import MusicsteerError, one_line, printable, shown

REQUIRED = ("trial_id", "pair", "choice")
CHOICES = ("steered", "prompted")
ALTERNATIVES = ("two-sided", "greater")


def read_answers(paths: list[str | Path]) -> list[dict]:
    """Every answer row of every file, checked, each listener's answer to a trial once (`unique`);
    MusicsteerError names the file and line of a bad one."""
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
                    pair, trial = (row.get("pair") or "").strip(), (row.get("trial_id") or "").strip()
                    if not pair or not trial:
                        raise MusicsteerError(f"{path} line {line}: empty {'pair' if not pair else 'trial_id'}")
                    rows.append({**row, "pair": pair, "trial_id": trial, "choice": choice, "clip": _text(row, "clip"),
                                 "participant": listener_code(_text(row, "participant")), "file": str(path),
                                 "line": line, "code": _text(row, "participant")})
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise MusicsteerError(f"cannot read answers file {path}: {one_line(e)}") from None
    if not rows:
        raise MusicsteerError(f"no answers in {', '.join(map(str, paths))}")
    return unique(rows)


def _text(row: dict, column: str) -> str:
    return (row.get(column) or "").strip()


def listener_code(code: str) -> str:
    """A participant code as one listener: NFKC, case-folded, without invisible format characters (a
    zero-width space) or spaces at the ends, so "Alice", "alice\u200b" and a decomposed "José" are one."""
    text = unicodedata.normalize("NFKC", code)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip().casefold()


def unique(rows: list[dict]) -> list[dict]:
    """Each listener's answer to each trial once. A listener is the `participant` code (`listener_code`:
    spelling variants are one listener, said in a warning); rows without one are their file's own
    listener, and a file of such rows whose answers (trial, pair, clip, choice; play counts aside) hold or
    are held by an earlier such file's is that listener's download saved again (partial, or after a
    replay). The same answer again (same listener and trial, same pair, clip
    and choice: a second download, a file given twice, a repeated line) is counted once, with one warning
    per file naming the file it repeats; the same trial answered otherwise, or the same clips judged
    again under another trial number (another listening page), is refused in one line."""
    files: dict[str, list[dict]] = {}
    for row in rows:
        files.setdefault(row["file"], []).append(row)
    anonymous: list[tuple[str, frozenset]] = []  # an anonymous listener's first file, and its answers
    listener: dict[str, str] = {}  # an anonymous file -> the first file of its listener
    kept: list[dict] = []
    by_trial: dict[tuple[str, str], dict] = {}
    by_clips: dict[tuple[str, str, str], dict] = {}
    repeats: dict[str, dict[str, int]] = {}  # file -> the files it repeats -> answers counted once
    for file, found in files.items():
        if not any(row["participant"] for row in found):
            mine = frozenset((row["trial_id"], *_answer(row)) for row in found)
            same = next((first for first, theirs in anonymous if mine <= theirs or theirs <= mine), None)
            if same is None:
                anonymous.append((file, mine))
            listener[file] = same or file
        for row in found:
            who = row["participant"] or f"(no participant code) {listener.get(file, file)}"
            first = by_trial.setdefault((who, row["trial_id"]), row)
            if first is not row:
                if _answer(first) != _answer(row):
                    raise MusicsteerError(f"{_who(row)} answered trial {row['trial_id']} twice, differently: "
                                          f"{_shown(first)} and {_shown(row)}; keep only the file with the final "
                                          "answers")
                counts = repeats.setdefault(file, {})
                counts[first["file"]] = counts.get(first["file"], 0) + 1
                continue
            if row["clip"] and (same := by_clips.setdefault((who, row["pair"], row["clip"]), row)) is not row:
                raise MusicsteerError(f"{_who(row)} judged {row['pair']} clip {row['clip']} twice, as trial "
                                      f"{same['trial_id']} and trial {row['trial_id']} ({_where(same)}, "
                                      f"{_where(row)}): answers of two listening pages cannot be pooled")
            kept.append(row)
    spellings: dict[str, set[str]] = {}
    for row in rows:
        if row["participant"]:
            spellings.setdefault(row["participant"], set()).add(row["code"])
    for variants in (v for v in spellings.values() if len(v) > 1):
        print(f"musicsteer: warning: participant codes {', '.join(map(shown, sorted(variants)))} are one listener "
              "(case, width and invisible characters aside)", file=sys.stderr)
    for file, counts in repeats.items():
        of = ", ".join("itself" if earlier == file else printable(earlier) for earlier in counts)
        print(f"musicsteer: warning: {printable(file)} repeats {sum(counts.values())} answer(s) of {of} (the same "
              "listener, trial and choice): counted once", file=sys.stderr)
    return kept


def _answer(row: dict) -> tuple[str, str, str]:
    return row["pair"], row["clip"], row["choice"]


def _who(row: dict) -> str:
    return f"participant {shown(row['participant'])}" if row["participant"] else f"the listener of {row['file']}"


def _where(row: dict) -> str:
    return f"{row['file']} line {row['line']}"


def _shown(row: dict) -> str:
    clip = f" clip {row['clip']}" if row["clip"] else ""
    return f"{row['pair']}{clip} {row['choice']} ({_where(row)})"


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
