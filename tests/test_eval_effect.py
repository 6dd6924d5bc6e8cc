"""`musicsteer eval`'s effect studies end to end on the tiny MusicGen and the tiny random CLAP (offline):
`--pairs all`, the α curve with 95 % intervals, α = 0 against the unsteered codes, the cross-effect,
hold drift (past the model's window), fusion, and their bad inputs. Random weights: these check the
mechanics and the arithmetic, not musical outcomes. Expected statistics are recomputed here from the
per-clip scores in results.json, by formula (Student t quantiles are written out as constants)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_vectors
from test_eval_support import run_cli

from musicsteer.evaluation.hold import spans
from musicsteer.evaluation.metrics import estimate, interval

torch.set_num_threads(1)

GENRES = ("rock", "classical", "electronic", "jazz")
T_975 = {1: 12.706204736174694, 2: 4.302652729749462, 5: 2.5705818356363146}  # Student t quantiles, by df
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vectors(tiny, tmp_path_factory) -> str:
    return str(random_vectors(tiny, labels=GENRES).save(tmp_path_factory.mktemp("effect") / "genres.safetensors"))


@pytest.fixture(scope="module")
def run(vectors, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("effect-run") / "out"
    argv = ["eval", "--model", "tiny", "--device", "cpu", "--clap", "tiny", "--vectors", vectors, "--n", "2",
            "--pairs", "all", "--source-seconds", "1", "--seconds", "1", "--alphas", "1", "--hold-seconds", "2.5",
            "--hold-window", "1", "--fusion", "rock:jazz+electronic", "--out", str(out)]
    assert run_cli(argv) == 0
    return {"out": out, "argv": argv, "results": json.loads((out / "results.json").read_text())}


def clip_scores(results: dict, name: str, label: str) -> float:
    return results["clips"][name][label]


def t_interval(values: list[float], low: float = 0.0) -> list[float]:
    mean, n = sum(values) / len(values), len(values)
    half = T_975[n - 1] * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
    return [max(low, mean - half), min(1.0, mean + half)]


def test_intervals_by_hand() -> None:
    # mean 0.2, s 0.1, n 3: 0.2 ± 4.3027 · 0.1 / √3 = 0.2 ± 0.24841, the low end cut at 0 (a probability)
    assert interval([0.1, 0.2, 0.3]) == pytest.approx([0.0, 0.2 + 4.302652729749462 * 0.1 / math.sqrt(3)])
    assert interval([0.1, 0.2, 0.3], low=-1.0)[0] == pytest.approx(0.2 - 0.24841377, abs=1e-7)
    assert interval([0.5, 0.5]) == [0.5, 0.5] and interval([0.7]) is None
    assert estimate([0.7]) == {"mean": 0.7, "std": None, "n": 1, "ci": None}
    assert spans(60, 5) == [(5.0 * k, 5.0 * k + 5) for k in range(12)]
    assert spans(2.4, 1) == [(0, 1), (1, 2.4)]  # a remainder under half a window joins the last span
    assert spans(2.6, 1) == [(0, 1), (1, 2), (2, 2.6)]


def test_pairs_all_gives_every_ordered_pair_with_its_curve_and_intervals(run) -> None:
    results, out = run["results"], run["out"]
    pairs = [f"{a}:{b}" for a, b in itertools.permutations(GENRES, 2)]
    assert sorted(results["sweep"]) == sorted(pairs) and len(pairs) == 12
    assert sorted(results["transitions"]) == sorted(pairs)  # Table I has every pair too
    assert results["settings"]["ci"] == {"method": "student-t", "level": 0.95}
    rows = list(csv.DictReader((out / "effect.csv").open()))
    assert len(rows) == 12 * 3
    for pair in pairs:
        source, target = pair.split(":")
        folder = f"{source}-to-{target}"
        assert [p["alpha"] for p in results["sweep"][pair]] == [0.0, 0.5, 1.0]  # α = 0, --alpha, --alphas
        for point in results["sweep"][pair]:
            values = [clip_scores(results, f"{folder}/{i:02d}-steered-a{point['alpha']:g}", target) for i in range(2)]
            stat = point["target_score"]
            assert stat["n"] == 2 and stat["mean"] == pytest.approx(np.mean(values))
            assert stat["ci"] == pytest.approx(t_interval(values))
            assert 0 <= stat["ci"][0] <= stat["mean"] <= stat["ci"][1] <= 1
            assert sorted(point["scores"]) == sorted(GENRES)  # every label's P, not only the target's
            row = next(r for r in rows if (r["source"], r["target"], float(r["alpha"])) == (source, target,
                                                                                          point["alpha"]))
            assert float(row["mean"]) == pytest.approx(stat["mean"]) and float(row["ci_low"]) == pytest.approx(
                stat["ci"][0])
    for genre in GENRES:  # a plot per source genre
        assert (out / f"effect-{genre}.png").read_bytes()[:8] == PNG


def test_alpha_zero_is_the_unsteered_continuation_code_for_code(run) -> None:
    results, clips = run["results"], run["out"] / "clips"
    assert results["alpha0_check"] == {"clips": 24, "identical": 24, "differ": [], "ok": True}
    for source, target in itertools.permutations(GENRES, 2):
        for i in range(2):
            zero = clips / f"{source}-to-{target}/{i:02d}-steered-a0"
            plain = clips / f"{source}-to-{target}/{i:02d}-unsteered"
            assert np.array_equal(np.load(f"{zero}.npy"), np.load(f"{plain}.npy")), zero
            steered, unsteered = (json.loads(Path(f"{p}.json").read_text())["identity"] for p in (zero, plain))
            # made through the steering path (vectors, target, α 0), the other with no vectors at all
            assert steered["alpha"] == 0 and steered["target"] == target and "vectors_sha256" in steered
            assert "vectors_sha256" not in unsteered and unsteered["prompt"] == steered["prompt"]
            assert unsteered["seed"] == steered["seed"]


def test_cross_effect_holds_every_label_per_target_and_alpha(run) -> None:
    results, out = run["results"], run["out"]
    cross = results["cross_effect"]
    assert sorted(cross) == sorted(GENRES)
    for target, study in cross.items():
        assert sorted(study["sources"]) == sorted(g for g in GENRES if g != target)
        names = {alpha: [f"{s}-to-{target}/{i:02d}-steered-a{alpha:g}" for s in study["sources"] for i in range(2)]
                 for alpha in (0.0, 0.5, 1.0)}
        for point in study["points"]:
            assert point["n"] == 6 and sorted(point["scores"]) == sorted(GENRES)
            for label in GENRES:
                values = [clip_scores(results, n, label) for n in names[point["alpha"]]]
                changes = [v - clip_scores(results, n, label) for v, n in zip(values, names[0.0], strict=True)]
                assert point["scores"][label]["mean"] == pytest.approx(np.mean(values))
                assert point["change"][label]["mean"] == pytest.approx(np.mean(changes), abs=1e-12)
                low, high = point["scores"][label]["ci"]
                assert low <= point["scores"][label]["mean"] <= high
        assert all(s["mean"] == 0 for s in study["points"][0]["change"].values())  # α = 0 against itself
    assert len(list(csv.DictReader((out / "cross_effect.csv").open()))) == 4 * 3 * 4
    assert (out / "cross_effect.png").read_bytes()[:8] == PNG


def test_hold_spans_cover_the_held_seconds(run) -> None:
    results, out = run["results"], run["out"]
    hold = results["hold"]
    assert hold["spans"] == [[0, 1], [1, 2], [2, 2.5]] and hold["alpha"] == 0.5 and hold["seconds"] == 2.5
    assert sorted(hold["pairs"]) == sorted(results["sweep"]) and sorted(hold["targets"]) == sorted(GENRES)
    manifest = {c["name"]: c for c in json.loads((out / "manifest.json").read_text())["clips"]}
    for pair, curve in hold["pairs"].items():
        source, target = pair.split(":")
        names = [f"{source}-to-{target}/{i:02d}-hold-a0.5" for i in range(2)]
        for name in names:
            assert manifest[name]["prompt_frames"] == 50 and manifest[name]["frames"] == 50 + 125  # 1 s + 2.5 s
        for w, point in enumerate(curve["points"]):
            values = [results["hold_clips"][name][w][target] for name in names]
            assert point["target_score"]["mean"] == pytest.approx(np.mean(values))
            assert point["target_score"]["ci"] == pytest.approx(t_interval(values))
        first, last = ([results["hold_clips"][n][w][target] for n in names] for w in (0, -1))
        assert curve["drift"]["mean"] == pytest.approx(np.mean(np.subtract(last, first)))
    assert hold["targets"]["jazz"]["n"] == 6
    assert len(list(csv.DictReader((out / "hold.csv").open()))) == (12 + 4) * 3
    assert (out / "hold.png").read_bytes()[:8] == PNG


def test_a_hold_past_the_window_slides_as_a_live_session_and_continues_the_steered_arm(vectors, tmp_path) -> None:
    """31 s held after a 1 s source: 1600 frames, past the engine's 30 s window (1501 positions), so the
    generator slid as a live session does. Its start is the steered clip's (same source, seed, α, batch
    shape): the steered clip's frames all equal it, but the last 3, where the finite clip's delayed
    codebooks saw its end (MusicGen's 4 codebooks: delays 0-3)."""
    out = tmp_path / "out"
    assert run_cli(["eval", "--model", "tiny", "--device", "cpu", "--clap", "tiny", "--vectors", vectors, "--n", "1",
                    "--pairs", "rock:jazz", "--source-seconds", "1", "--seconds", "1", "--hold-seconds", "31",
                    "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    held = np.load(out / "clips/rock-to-jazz/00-hold-a0.5.npy")
    steered = np.load(out / "clips/rock-to-jazz/00-steered-a0.5.npy")
    assert held.shape == (4, 1600) and 1600 > 30 * 50 + 1
    assert np.array_equal(held[:, :97], steered[:, :97])
    assert [tuple(s) for s in results["hold"]["spans"]] == [(5.0 * k, 5.0 * k + 5) for k in range(5)] + [(25, 31)]
    assert results["settings"]["hold_generator"] == {"window_seconds": 30.0, "keep_seconds": 12.0}


def test_fusion_against_each_target_alone(run) -> None:
    results, out = run["results"], run["out"]
    fusion = results["fusion"]["rock:jazz+electronic"]
    assert fusion["targets"] == ["jazz", "electronic"] and fusion["mix"] == {"jazz": 1.0, "electronic": 1.0}
    assert list(fusion["arms"]) == ["fused", "jazz alone", "electronic alone", "unsteered"]
    for arm, prefix in (("fused", "rock-to-jazz-and-electronic/{i:02d}-fused-a0.5"),
                        ("jazz alone", "rock-to-jazz/{i:02d}-steered-a0.5"),
                        ("electronic alone", "rock-to-electronic/{i:02d}-steered-a0.5"),
                        ("unsteered", "rock-to-jazz/{i:02d}-unsteered")):
        for label in GENRES:
            values = [clip_scores(results, prefix.format(i=i), label) for i in range(2)]
            assert fusion["arms"][arm][label]["mean"] == pytest.approx(np.mean(values)), (arm, label)
    clips = out / "clips"
    fused = np.load(clips / "rock-to-jazz-and-electronic/00-fused-a0.5.npy")
    identity = json.loads((clips / "rock-to-jazz-and-electronic/00-fused-a0.5.json").read_text())["identity"]
    assert identity["mix"] == {"jazz": 1.0, "electronic": 1.0} and identity["alpha"] == 0.5
    for alone in ("rock-to-jazz", "rock-to-electronic"):
        other = np.load(clips / f"{alone}/00-steered-a0.5.npy")
        assert np.array_equal(fused[:, :50], other[:, :50]) and not np.array_equal(fused, other)
    jazz = [clip_scores(results, f"rock-to-jazz-and-electronic/{i:02d}-fused-a0.5", "jazz")
            - clip_scores(results, f"rock-to-jazz/{i:02d}-steered-a0.5", "jazz") for i in range(2)]
    assert fusion["fused_minus_alone"]["jazz"]["mean"] == pytest.approx(np.mean(jazz))
    assert len(list(csv.DictReader((out / "fusion.csv").open()))) == 4 * 4
    assert (out / "fusion.png").read_bytes()[:8] == PNG


def test_a_rerun_reuses_every_clip_and_a_broken_alpha_zero_fails_loudly(run, tmp_path, capsys) -> None:
    """The studies share the clip cache: a rerun makes nothing. Then one α = 0 clip's codes are made to
    differ from the unsteered one's, as a broken steering path at α = 0 would leave them (the engine
    itself drops an α = 0 term before any rule runs, so no library call can break it honestly): the run
    writes everything and ends with one line, exit 2."""
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    argv = [*run["argv"][:-1], str(out)]
    capsys.readouterr()
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "clips: 0 generated, 154 reused" in printed  # 8 sources, 12 × 2 × 6, 2 fused
    assert "α = 0: 24 of 24 steered clips equal the unsteered ones" in printed
    codes_path = out / "clips/jazz-to-rock/01-steered-a0.npy"
    codes = np.load(codes_path)
    codes[2, 70] = (codes[2, 70] + 1) % 2048
    np.save(codes_path, codes)
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "α = 0 is not the unsteered continuation: 1 of 24 clips differ" in err, err
    assert "jazz:rock #1" in err
    check = json.loads((out / "results.json").read_text())["alpha0_check"]
    assert check == {"clips": 24, "identical": 23, "differ": ["jazz:rock #1"], "ok": False}


@pytest.mark.parametrize(("extra", "message"), [
    (["--pairs", "rock:metal"], "unknown genre 'metal'"),
    (["--pairs", "all", "--fusion", "rock:jazz+metal"], "unknown genre 'metal'"),
    (["--hold-seconds", "0"], "--hold-seconds must be"),
    (["--hold-seconds", "1e9"], "at most 600"),
    (["--hold-seconds", "nan"], "--hold-seconds must be finite"),
    (["--hold-seconds", "10", "--hold-window", "0.5"], "--hold-window must be at least 1"),
    (["--hold-seconds", "3", "--hold-window", "5"], "--hold-window 5 s is longer than --hold-seconds 3 s"),
    (["--pairs", "all", "--fusion", "rock:jazz+jazz"], "names a genre twice"),
    (["--pairs", "all", "--fusion", "rock:rock+jazz"], "names a genre twice"),
    (["--pairs", "all", "--fusion", "rock:jazz"], "--fusion needs SOURCE:A+B"),
    (["--pairs", "all", "--fusion", "rock:jazz+classical,rock:classical+jazz"], "lists 'rock:classical+jazz' twice"),
    (["--pairs", "rock:jazz", "--fusion", "rock:jazz+classical"], "add rock:classical to --pairs"),
])
def test_bad_effect_inputs_are_one_line_and_exit_2_before_any_work(vectors, tmp_path, capsys, extra,
                                                                   message) -> None:
    out = tmp_path / "out"
    argv = ["eval", "--model", "tiny", "--device", "cpu", "--clap", "tiny", "--vectors", vectors, "--n", "1",
            "--seconds", "1", "--source-seconds", "1", "--pairs", "rock:jazz", *extra, "--out", str(out)]
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("musicsteer: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()  # nothing was made


def test_pairs_all_needs_two_genres(tiny, tmp_path, capsys) -> None:
    one = str(random_vectors(tiny, labels=("rock",)).save(tmp_path / "one.safetensors"))
    capsys.readouterr()
    assert run_cli(["eval", "--model", "tiny", "--device", "cpu", "--clap", "tiny", "--vectors", one,
                    "--pairs", "all", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--pairs all needs at least two genres; the vectors file has rock" in err and err.count("\n") == 1
