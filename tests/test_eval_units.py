"""`musicsteer eval` arithmetic: Table I deltas and summaries, Table II binomial tests, trials, CLAP scores.

Every expected number here is computed by hand (or from the binomial formula with math.comb), never
by the code under test.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from test_eval_support import run_cli

from musicsteer.engine.errors import MusicsteerError
from musicsteer.evaluation import metrics, twoafc
from musicsteer.evaluation.listening import make_trials
from musicsteer.evaluation.protocol import DEFAULT_PAIRS, parse_pairs

torch.set_num_threads(1)


def test_transition_deltas_mean_and_std_by_hand() -> None:
    source = [0.10, 0.20, 0.30]
    steered = [0.40, 0.60, 0.50]  # deltas 0.30, 0.40, 0.20 -> mean 0.30, sample std 0.10
    prompted = [0.10, 0.30, 0.30]  # deltas 0.00, 0.10, 0.00 -> mean 1/30, var (1/900+4/900+1/900)/2
    row = metrics.transition(source, steered, prompted)
    assert row["original"]["mean"] == pytest.approx(0.20)
    assert row["original"]["std"] == pytest.approx(0.10)
    assert row["steered"]["deltas"] == pytest.approx([0.30, 0.40, 0.20])
    assert row["steered"]["delta"]["mean"] == pytest.approx(0.30)
    assert row["steered"]["delta"]["std"] == pytest.approx(0.10)
    assert row["steered"]["modified"]["mean"] == pytest.approx(0.50)
    assert row["prompted"]["delta"]["mean"] == pytest.approx(1 / 30)
    assert row["prompted"]["delta"]["std"] == pytest.approx(math.sqrt(3 / 900))
    assert row["steered_beats_prompted"] == pytest.approx(1.0)
    assert row["steered"]["delta"]["n"] == 3


def test_single_clip_has_no_std_and_table_says_so() -> None:
    row = metrics.transition([0.25], [0.75], [0.5])
    assert row["steered"]["delta"] == {"mean": 0.5, "std": None, "n": 1}
    table = metrics.markdown_table({"rock:jazz": row}, alpha=0.5, layer=3)
    assert "| rock → jazz | Steered (α=0.5, layer 3) | 0.250 | 0.750 | +0.500 |" in table
    assert "|  | Prompted | 0.250 | 0.500 | +0.250 |" in table
    with pytest.raises(ValueError):
        metrics.transition([0.1, 0.2], [0.3], [0.4])


def _binom_two_sided_half(k: int, n: int) -> float:
    """For p = 0.5 the distribution is symmetric: P(X <= min) + P(X >= max), capped at 1."""
    lo, hi = min(k, n - k), max(k, n - k)
    if lo == hi:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(hi, n + 1)) / 2**n
    return min(1.0, 2 * tail)


def _binom_greater_half(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


ANSWERS_1 = """trial_id,pair,clip,choice,order,position,plays_a,plays_b,participant
1,rock:classical,0,steered,steered-first,A,1,1,p1
2,rock:classical,1,steered,prompted-first,B,1,2,p1
3,rock:classical,2,prompted,steered-first,B,1,1,p1
4,jazz:rock,0,steered,prompted-first,B,0,0,p1
5,jazz:rock,1,prompted,prompted-first,A,0,0,p1
"""
ANSWERS_2 = """trial_id,pair,choice
1,rock:classical,steered
2,rock:classical,steered
3,rock:classical,steered
4,rock:classical,steered
5,rock:classical,steered
6,rock:classical,steered
7,rock:classical,prompted
8,jazz:rock,prompted
"""


def test_score_2afc_accuracy_and_exact_binomial_p_values(tmp_path) -> None:
    (tmp_path / "a.csv").write_text(ANSWERS_1)
    (tmp_path / "b.csv").write_text(ANSWERS_2)
    rows = twoafc.read_answers([tmp_path / "a.csv", tmp_path / "b.csv"])
    result = twoafc.score(rows)
    # rock:classical: 2 + 6 = 8 steered of 3 + 7 = 10; jazz:rock: 1 of 3; all: 9 of 13
    rc, jr, total = result["pairs"]["rock:classical"], result["pairs"]["jazz:rock"], result["all"]
    assert (rc["n"], rc["steered"], rc["accuracy"]) == (10, 8, 0.8)
    assert rc["p_value"] == pytest.approx(112 / 1024)  # 2 * (C(10,8)+C(10,9)+C(10,10)) / 2^10
    assert (jr["n"], jr["steered"]) == (3, 1) and jr["p_value"] == pytest.approx(1.0)
    assert (total["n"], total["steered"]) == (13, 9)
    assert total["p_value"] == pytest.approx(_binom_two_sided_half(9, 13))
    assert list(result["pairs"]) == ["rock:classical", "jazz:rock"]  # order of first appearance
    greater = twoafc.score(rows, "greater")
    assert greater["pairs"]["rock:classical"]["p_value"] == pytest.approx(56 / 1024)
    assert greater["pairs"]["jazz:rock"]["p_value"] == pytest.approx(7 / 8)
    assert greater["all"]["p_value"] == pytest.approx(_binom_greater_half(9, 13))
    table = twoafc.markdown(result)
    assert "| rock → classical | 10 | 8 | 0.800 | 0.1094 |" in table
    assert "two-sided" in table


@pytest.mark.parametrize(("k", "n"), [(34, 42), (31, 42), (61, 102), (0, 5), (5, 10)])
def test_two_sided_p_matches_the_formula(k: int, n: int) -> None:
    assert twoafc._test(n, k, "two-sided")["p_value"] == pytest.approx(_binom_two_sided_half(k, n), rel=1e-9)


def test_score_2afc_command_writes_markdown_and_json(tmp_path, capsys) -> None:
    (tmp_path / "a.csv").write_text(ANSWERS_1)
    (tmp_path / "b.csv").write_text(ANSWERS_2)
    code = run_cli(["eval", "score-2afc", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                    "--out", str(tmp_path / "report"), "--alternative", "greater"])
    assert code == 0
    assert "| rock → classical | 10 | 8 | 0.800 | 0.0547 |" in capsys.readouterr().out
    data = json.loads((tmp_path / "report" / "2afc.json").read_text())
    assert data["alternative"] == "greater" and data["pairs"]["jazz:rock"]["steered"] == 1
    assert (tmp_path / "report" / "2afc.md").read_text().startswith("| Transition |")


@pytest.mark.parametrize(("text", "message"), [
    ("trial_id,pair,choice\n1,rock:jazz,maybe\n", "line 2: choice must be steered or prompted"),
    ("trial_id,choice\n1,steered\n", "no column pair"),
    ("trial_id,pair,choice\n", "no answers"),
])
def test_score_2afc_bad_csv_is_one_line_exit_2(tmp_path, capsys, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    assert run_cli(["eval", "score-2afc", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert run_cli(["eval", "score-2afc", str(tmp_path / "missing.csv")]) == 2
    assert "answers file not found" in capsys.readouterr().err


def test_pairs_parsing() -> None:
    assert parse_pairs(None) == DEFAULT_PAIRS
    assert parse_pairs(" rock:jazz , jazz:rock") == (("rock", "jazz"), ("jazz", "rock"))
    for bad in ("rock", "rock:", "rock:rock", "a:b,a:b"):
        with pytest.raises(MusicsteerError):
            parse_pairs(bad)


def test_trials_are_seeded_shuffled_and_balanced() -> None:
    pairs = {f"g{p}:h{p}": [(f"s{p}{i}.wav", f"p{p}{i}.wav") for i in range(10)] for p in range(4)}
    trials = make_trials(pairs, seed=7)
    assert trials == make_trials(pairs, seed=7) and trials != make_trials(pairs, seed=8)
    assert [t["trial_id"] for t in trials] == list(range(1, 41))
    assert {t["order"] for t in trials} == {"steered-first", "prompted-first"}
    assert [t["pair"] for t in trials] != sorted(t["pair"] for t in trials)  # interleaved, not blocked
    for t in trials:
        steered = t["a"] if t["order"] == "steered-first" else t["b"]
        assert steered.startswith("s") and {t["a"], t["b"]} == set(pairs[t["pair"]][t["clip"]])


def test_clap_scores_equal_the_transformers_pipeline() -> None:
    """The scorer claims the paper's pipeline numbers: check against the pipeline itself."""
    from transformers import pipeline

    from musicsteer.evaluation.clap import ClapScorer
    from musicsteer.evaluation.tiny_clap import ensure_tiny_clap

    scorer = ClapScorer("tiny")
    rng = random.Random(0)
    audio = np.array([rng.uniform(-0.3, 0.3) for _ in range(48000)], dtype=np.float32)
    labels = ["rock", "classical", "jazz"]
    ours = scorer.scores([audio], labels)[0]
    assert ours.sum() == pytest.approx(1.0, abs=1e-6)
    classifier = pipeline("zero-shot-audio-classification", model=str(ensure_tiny_clap()))
    theirs = {r["label"]: r["score"] for r in classifier(audio, candidate_labels=labels)}
    assert ours == pytest.approx([theirs[label] for label in labels], abs=1e-6)
