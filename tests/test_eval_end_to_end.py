"""`musicsteer eval` end to end on the tiny MusicGen and the tiny random CLAP (offline), the resume
path, and the 2AFC page driven through headless Chromium into score-2afc."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import chromium, cli_error, random_vectors
from test_eval_support import run_cli

torch.set_num_threads(1)

GENRES = ("rock", "classical", "electronic", "jazz")
ALPHAS = (0.2, 0.5, 0.8)
CLIPS = 2 * (3 + 1 + len(ALPHAS))  # per clip index: source, prompted, unsteered, α = 0 and the sweep


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    vectors = str(random_vectors(tiny, labels=GENRES).save(root / "genres.safetensors"))
    out = root / "out"
    argv = ["eval", "--model", "tiny", "--device", "cpu", "--clap", "tiny", "--vectors", vectors,
            "--n", "2", "--pairs", "rock:classical", "--source-seconds", "1", "--seconds", "1",
            "--alphas", "0.2,0.8", "--out", str(out)]
    assert run_cli(argv) == 0
    return {"out": out, "argv": argv, "vectors": vectors}


def test_writes_table_json_png_wavs_manifest_and_page(evaluated) -> None:
    out = evaluated["out"]
    table = (out / "table.md").read_text()
    assert "| rock → classical | Steered (α=0.5, layer 1) |" in table and "|  | Prompted |" in table
    assert (out / "alpha_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    row = results["transitions"]["rock:classical"]
    # the JSON is self-consistent: Δ = modified − original per clip, and its mean is the table's
    src = [results["clips"][f"source/rock-{i:02d}"]["classical"] for i in range(2)]
    steered = [results["clips"][f"rock-to-classical/{i:02d}-steered-a0.5"]["classical"] for i in range(2)]
    assert row["steered"]["deltas"] == pytest.approx(np.subtract(steered, src).tolist())
    assert f"{row['steered']['delta']['mean']:+.3f}" in table
    assert [p["alpha"] for p in results["sweep"]["rock:classical"]] == [0.0, *ALPHAS]  # α = 0 always
    for scores in results["clips"].values():
        assert list(scores) == list(GENRES) and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)

    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["clips"]) == CLIPS and len(manifest["trials"]) == 2
    for clip in manifest["clips"]:
        audio, rate = sf.read(out / clip["wav"])
        assert rate == 32000 and len(audio) == clip["frames"] * 640
        if clip["kind"] != "source":
            assert clip["prompt_frames"] == 50 and clip["frames"] == 100  # 1 s source + 1 s continuation
    page = (out / "listening_test.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing from the network
    for trial in manifest["trials"]:
        assert (out / trial["a"]).is_file() and (out / trial["b"]).is_file() and trial["a"] in page


def test_continuations_share_the_source_and_steering_changes_the_codes(evaluated) -> None:
    clips = evaluated["out"] / "clips"
    source = np.load(clips / "source/rock-00.npy")
    codes = {name: np.load(clips / f"rock-to-classical/00-{name}.npy")
             for name in ("prompted", "unsteered", "steered-a0", *(f"steered-a{a:g}" for a in ALPHAS))}
    for name, c in codes.items():
        assert np.array_equal(c[:, :50], source), name  # the same start, token for token
    assert np.array_equal(codes.pop("steered-a0"), codes["unsteered"])  # α = 0 is no steering, code for code
    continuations = [c[:, 50:].tobytes() for c in codes.values()]
    assert len(set(continuations)) == len(continuations)  # every arm and α differs after the start


def test_second_run_reuses_every_clip(evaluated, capsys) -> None:
    out = evaluated["out"]
    wavs = sorted(out.glob("clips/**/*.wav"))
    before = {p: p.stat().st_mtime_ns for p in out.glob("clips/**/*") if p.is_file()}
    time.sleep(0.05)  # a rewrite would get a later mtime
    capsys.readouterr()
    assert run_cli(evaluated["argv"]) == 0
    assert f"clips: 0 generated, {CLIPS} reused" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before and len(wavs) == CLIPS
    # a changed setting (another α) makes only the clips it changes
    assert run_cli([*evaluated["argv"][:-2], "--alpha", "0.3", "--out", str(out)]) == 0
    assert f"clips: 2 generated, {CLIPS - 2} reused" in capsys.readouterr().out  # only the α=0.3 clips are new
    assert run_cli(evaluated["argv"]) == 0  # and the old ones were kept: back to the first run's set
    assert f"clips: 0 generated, {CLIPS} reused" in capsys.readouterr().out


def same_clips(a: Path, b: Path) -> None:
    """Eval folder `b` holds `a`'s clips (codes) and the same results."""
    names = sorted(p.relative_to(b) for p in (b / "clips").rglob("*.npy"))  # `a` may hold more (other α)
    assert len(names) == CLIPS
    for name in names:
        assert np.array_equal(np.load(a / name), np.load(b / name)), name
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())


def test_ray_makes_the_single_process_clips(evaluated, ray_address, tmp_path, capsys) -> None:
    """--ray: the plan's batches rendered by a local Ray cluster's two actors, saved here: the single
    process's clips, code for code, and its results."""
    out = tmp_path / "ray"
    capsys.readouterr()
    assert run_cli([*evaluated["argv"][:-2], "--ray", ray_address, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "starting 2 Ray actor(s), each 1 CPU(s)" in printed and f"clips: {CLIPS} generated, 0 reused" in printed
    same_clips(evaluated["out"], out)


@pytest.mark.parametrize("mode", ["single process", "ray"])
def test_a_killed_eval_resumes_to_the_same_clips(mode, evaluated, tmp_path, request, capsys) -> None:
    """SIGKILL once the first batch (the sources) is saved: the rerun keeps those clips and makes the
    rest, and the folder ends as the uninterrupted run's."""
    out, log = tmp_path / "out", tmp_path / "killed.log"
    ray = ["--ray", request.getfixturevalue("ray_address")] if mode == "ray" else []
    command = [sys.executable, "-m", "musicsteer", *evaluated["argv"][:-2], *ray, "--out", str(out)]
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("clips/**/*.json")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no clip saved"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = len(list(out.glob("clips/**/*.json")))
    assert 0 < kept < CLIPS and not (out / "results.json").exists()
    capsys.readouterr()
    assert run_cli(command[3:]) == 0  # the rerun, from this process
    assert f"clips: {CLIPS - kept} generated, {kept} reused" in capsys.readouterr().out
    same_clips(evaluated["out"], out)


def test_a_second_eval_into_a_folder_being_written_is_one_line(evaluated, capsys) -> None:
    """The eval folder has one writer at a time (engine/files.only_writer), as the activations cache has."""
    from musicsteer.engine.files import only_writer

    with only_writer(evaluated["out"], "the eval folder"):  # another run is writing it
        line = cli_error(evaluated["argv"], capsys)
    assert "another musicsteer command is writing the eval folder" in line


def test_decode_graph_is_honoured_and_gives_the_eager_codes(evaluated, tmp_path, capsys) -> None:
    """--decode graph generates through the static step (on the CPU run without capture); its clips
    are not the eager ones (the step is in their identity), yet their codes equal them."""
    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)
    argv = evaluated["argv"]
    n, alphas = argv.index("--n"), argv.index("--alphas")
    graph_argv = [*argv[:n], "--n", "1", *argv[n + 2 : alphas], "--decode", "graph", "--out", str(out)]
    capsys.readouterr()
    assert run_cli(graph_argv) == 0
    assert "clips: 5 generated, 0 reused" in capsys.readouterr().out  # source, prompted, unsteered, α 0 and 0.5
    assert json.loads((evaluated["out"] / "results.json").read_text())["settings"]["decode"] == "eager"  # auto, CPU
    assert json.loads((out / "results.json").read_text())["settings"]["decode"] == "graph"
    for name in ("source/rock-00", "rock-to-classical/00-prompted", "rock-to-classical/00-steered-a0.5"):
        assert json.loads((out / "clips" / f"{name}.json").read_text())["identity"]["decode"] == "graph"
        assert np.array_equal(np.load(out / "clips" / f"{name}.npy"),
                              np.load(evaluated["out"] / "clips" / f"{name}.npy")), name


def test_listening_page_in_headless_chromium_exports_csv_for_score_2afc(evaluated, tmp_path, capsys) -> None:
    from selenium.webdriver.common.by import By

    out = evaluated["out"]
    trials = json.loads((out / "manifest.json").read_text())["trials"]
    downloads = tmp_path / "downloads"
    driver = chromium(tmp_path / "profile", prefs={"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    try:
        driver.get((out / "listening_test.html").as_uri())
        driver.find_element(By.ID, "participant").send_keys("tester 1")
        driver.find_element(By.ID, "start").click()
        # the WAVs load through the relative paths and replay is counted
        played = driver.execute_async_script("""
            const done = arguments[arguments.length - 1], el = document.getElementById("audio-a");
            el.play().then(() => { el.pause(); el.currentTime = 0; return el.play(); })
              .then(() => { el.pause(); done({duration: el.duration, plays: plays[0].a}); })
              .catch((e) => done({error: String(e)}));""")
        assert played == {"duration": 2, "plays": 2}
        # choose the steered clip in trial 1 and the prompted one in trial 2, whatever their positions
        for trial, want in zip(trials, ("steered", "prompted"), strict=True):
            assert driver.find_element(By.ID, "progress").text == f"Trial {trial['trial_id']} of 2"
            steered_is_a = trial["order"] == "steered-first"
            position = "a" if (want == "steered") == steered_is_a else "b"
            driver.find_element(By.ID, f"choose-{position}").click()
        assert driver.find_element(By.ID, "count").text == "2 of 2 trials answered"
        driver.find_element(By.ID, "download").click()
        target = downloads / "answers-tester_1.csv"
        for _ in range(100):
            if target.is_file() and target.stat().st_size:
                break
            time.sleep(0.05)
    finally:
        driver.quit()
    rows = list(csv.DictReader(target.open()))
    assert [(r["trial_id"], r["choice"], r["order"], r["plays_a"]) for r in rows] == [
        (str(trials[0]["trial_id"]), "steered", trials[0]["order"], "2"),
        (str(trials[1]["trial_id"]), "prompted", trials[1]["order"], "0"),
    ]
    assert rows[0]["pair"] == "rock:classical" and rows[0]["participant"] == "tester 1"
    capsys.readouterr()
    assert run_cli(["eval", "score-2afc", str(target)]) == 0
    assert "| rock → classical | 2 | 1 | 0.500 | 1.0000 |" in capsys.readouterr().out


def test_bad_inputs_fail_with_one_line_and_exit_2(evaluated, tmp_path, capsys, monkeypatch) -> None:
    argv = evaluated["argv"]
    out = ["--out", str(tmp_path / "x")]

    def fails(args: list[str], message: str) -> None:
        capsys.readouterr()
        assert run_cli(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("musicsteer: error: ") and message in err and err.count("\n") == 1, err

    def with_flag(flag: str, value: str) -> list[str]:
        i = argv.index(flag)
        return [*argv[:i], flag, value, *argv[i + 2 : -2], *out]

    fails(with_flag("--pairs", "rock:metal"), "unknown genre 'metal': the vectors file has rock, classical")
    fails(with_flag("--vectors", str(tmp_path / "nope.safetensors")), "not found")
    fails(with_flag("--clap", str(tmp_path / "no-clap")), "CLAP model not found")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails(with_flag("--clap", "nobody/no-such-clap"), "CLAP model 'nobody/no-such-clap' not found")
    fails(with_flag("--clap", str(Path(evaluated["vectors"]).parent)), "no config.json")
    fails([*argv[:-2], "--layer", "7", *out], "--layer 7 out of range")
    fails([*argv[:-2]], "eval needs --out DIR")
    assert not (tmp_path / "x" / "clips").exists()  # nothing generated before a failure
