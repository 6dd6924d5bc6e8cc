"""`musicsteer probe extract|analyze|train` end to end on the tiny model and synthetic audio.

Real processes where the CLI contract is the point (exit status 2 and one line, SIGKILL and
resume), in process where only the result matters. The collection: chord / drums / noise clips
(engine.synthetic.synthetic_clip), 16 of 4 s per kind, cut into 2 s segments (96 segments). The tiny
model's 64-wide mean-pooled residual stream needs that much: held-out mse-probe accuracy over 10
split seeds was 0.36-0.82 for 12 clips of 2 s cut into 1 s (tiny recipe 2). With tiny recipe 3
(code embeddings that follow the codewords) this set gives 0.87-1.0 (mean 0.97) over 20 split
seeds, on every CPU kernel choice tried (ATEN_CPU_CAPABILITY, MKL_CBWR); recipe 2's random code
embeddings gave 0.53-0.93 on split seed 0 alone, depending only on the float rounding of the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicsteer.cli import main
from musicsteer.commands.probe import register
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.engine.vectors import SteeringVectors
from musicsteer.probes import train
from musicsteer.probes.cache import KEYS, ActivationCache, load_activations

KINDS = ("chord", "drums", "noise")
EXTRACT = ["--model", "tiny", "--device", "cpu", "--segment-seconds", "2"]
TOTAL = 3 * 16 * 2  # segments


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicsteer", "probe", *args], capture_output=True, text=True,
                          timeout=timeout)


def in_process(*args: str) -> int:
    """The probe command on its own parser, as cli.main runs it (MusicsteerError -> exit 2)."""
    parser = argparse.ArgumentParser(prog="musicsteer")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["probe", *args])
    try:
        return parsed.run(parsed)
    except MusicsteerError as err:
        print(f"musicsteer: error: {err}", file=sys.stderr)
        return 2


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("musicsteer: error: "), result.stderr
    return lines[0]


def write_clips(folder: Path, kinds: tuple[str, ...], clips: int, seconds: float) -> None:
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(clips):
            sf.write(folder / kind / f"{i:02d}.wav", synthetic_clip(kind, seconds, 32000, i), 32000)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probe-data") / "clips"
    write_clips(folder, KINDS, 16, 4.0)
    return folder


@pytest.fixture(scope="module")
def acts(collection, tmp_path_factory) -> Path:
    """An uninterrupted extraction through the CLI (also the reference of the resume test)."""
    out = tmp_path_factory.mktemp("probe-acts") / "acts"
    result = cli("extract", "--data", str(collection), "--out", str(out), *EXTRACT)
    assert result.returncode == 0, result.stderr
    assert f"extracted {TOTAL} segments of 48 files, 3 labels" in result.stdout
    return out


def test_extract_writes_every_layer_pooled_both_ways(acts) -> None:
    manifest = json.loads((acts / "manifest.json").read_text())
    assert manifest["complete"] and manifest["model_name"] == "tiny" and manifest["labels"] == list(KINDS)
    assert len(manifest["segments"]) == TOTAL and manifest["skipped"] == []
    assert not (acts / "shards").exists()
    for key in KEYS:
        array = np.load(acts / f"{key}.npy")
        assert array.shape == (TOTAL, 2, 64) and array.dtype == np.float32 and np.isfinite(array).all()
    mean, last = np.load(acts / "residual.mean.npy"), np.load(acts / "residual.last.npy")
    assert not np.allclose(mean, last)
    assert not np.allclose(mean[:, 0], mean[:, 1])  # the rows are different layers
    assert np.unique(mean[:, 0], axis=0).shape[0] == TOTAL  # different audio, different activations


def test_train_analyze_and_the_vectors_steer_a_render(acts, tiny, tmp_path) -> None:
    vectors_path = tmp_path / "kinds.safetensors"
    result = cli("train", str(acts), "--out", str(vectors_path))
    assert result.returncode == 0, result.stderr
    vectors = SteeringVectors.load(vectors_path)
    vectors.check_model(tiny.num_layers, tiny.d_model, tiny.name)
    assert vectors.labels == list(KINDS) and vectors.method == "mse" and vectors.site == "residual"
    assert vectors.model == "tiny" and vectors.dataset.startswith("sha256:")
    assert vectors.accuracy[vectors.best_layer] >= 0.8  # chance is 1/3
    assert vectors.accuracy[vectors.best_layer] == max(vectors.accuracy)

    report_dir = tmp_path / "report"
    result = cli("analyze", str(acts), "--out", str(report_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads((report_dir / "report.json").read_text())
    assert max(row["ari"] for row in report["layers"]) > 0
    assert [row["probe_accuracy"] for row in report["layers"]] == pytest.approx(vectors.accuracy)
    assert np.asarray(report["jaccard"]["matrix"]).shape == (3, 3)
    for name in ("layers.png", "jaccard.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report_dir / "layers.csv").read_text().splitlines()[0] == "layer,ari,nmi,probe_accuracy"

    codes = {}
    for name, steer in (("plain", []), ("steered", ["--vectors", str(vectors_path), "--steer", "drums",
                                                    "--alpha", "0.8"])):
        assert main(["render", "--model", "tiny", "--device", "cpu", "--seconds", "1", "--top-k", "1", *steer,
                     "--out", str(tmp_path / f"{name}.wav"), "--codes-out", str(tmp_path / f"{name}.npy")]) == 0
        codes[name] = np.load(tmp_path / f"{name}.npy")
    assert codes["plain"].shape == codes["steered"].shape == (4, 50)
    assert not np.array_equal(codes["plain"], codes["steered"])


def test_a_layers_probe_sees_only_that_layer_of_the_cache(acts, tmp_path) -> None:
    copy = tmp_path / "acts"
    shutil.copytree(acts, copy)
    array = np.load(copy / "residual.mean.npy")
    array[:, 1] = array[np.random.default_rng(0).permutation(TOTAL), 1]  # layer 1 no longer matches labels
    np.save(copy / "residual.mean.npy", array)
    before = train.train_all(load_activations(acts))
    after = train.train_all(load_activations(copy))
    assert np.array_equal(after.directions[:, 0], before.directions[:, 0]) and after.accuracy[0] == before.accuracy[0]
    assert not np.allclose(after.directions[:, 1], before.directions[:, 1])
    assert after.accuracy[1] < before.accuracy[1]


def test_killed_extraction_resumes_to_the_same_arrays(collection, acts, tmp_path, capsys) -> None:
    out = tmp_path / "acts"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "musicsteer", "probe", "extract", "--data", str(collection),
                             "--out", str(out), *EXTRACT], stdout=log, stderr=log)
    deadline = time.monotonic() + 240
    try:
        while not list((out / "shards").glob("shard-*.npz")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no shard written"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    cache = ActivationCache(out)
    assert not cache.read_manifest()["complete"], "the run finished before it could be killed"
    done = len(cache.done())
    assert 0 < done < TOTAL

    capsys.readouterr()
    assert in_process("extract", "--data", str(collection), "--out", str(out), *EXTRACT) == 0  # the rerun
    passes = math.ceil((TOTAL - done) / 4)  # only the segments not done, in batches of 4
    assert f"in {passes} forward passes, {done} segments were already done" in capsys.readouterr().out
    assert not list(out.rglob(".*.tmp*")) and not (out / "shards").exists()
    for key in KEYS:
        assert np.array_equal(np.load(out / f"{key}.npy"), np.load(acts / f"{key}.npy")), key
    assert in_process("extract", "--data", str(collection), "--out", str(out), *EXTRACT) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty folder", "one label", "csv without columns", "other model"])
def test_unusable_input_is_one_line_and_exit_2(case, collection, acts, tmp_path) -> None:
    data, out, extra = tmp_path / "data", tmp_path / "acts", []
    if case == "empty folder":
        data.mkdir()
        expected = "no audio files"
    elif case == "one label":
        write_clips(data, ("chord",), 2, 1.0)
        expected = "only one label"
    elif case == "csv without columns":
        data = tmp_path / "list.csv"
        data.write_text("file,genre\nclips/chord/00.wav,chord\n")
        expected = "columns path,label"
    else:  # a cache made by tiny, extended with tiny-stereo
        data = collection
        shutil.copytree(acts, out)
        extra = ["--model", "tiny-stereo"]
        expected = "made with model 'tiny:.*not 'tiny-stereo:.*use another --out"
    result = cli("extract", "--data", str(data), "--out", str(out), *EXTRACT, *extra)
    assert re.search(expected, error_line(result)), result.stderr


def test_unreadable_and_missing_files_are_counted_and_skipped(collection, tmp_path, capsys) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    rows = ["path,label"] + [f"{collection}/{kind}/{i:02d}.wav,{kind}" for kind in ("chord", "noise")
                             for i in range(3)]
    rows += ["broken.wav,chord", "nowhere/gone.wav,noise"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "acts"
    assert in_process("extract", "--data", str(tmp_path / "list.csv"), "--out", str(out), *EXTRACT) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "skipped 2 unreadable or missing file(s)" in warning[0]
    assert "broken.wav" in warning[0] and "nowhere/gone.wav" in warning[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["file"] for s in manifest["skipped"]} == {"broken.wav", "nowhere/gone.wav"}
    assert manifest["complete"] and len(manifest["segments"]) == 12 and manifest["labels"] == ["chord", "noise"]
    assert np.load(out / "residual.mean.npy").shape == (12, 2, 64)
