"""`musicsteer probe`'s inputs are bounded where they enter: one line, exit 2, before any model loads
or probe trains (--segment-seconds, --prompt, --batch, --layer, --test-fraction, the paths)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_line_error

from musicsteer.cli import main
from musicsteer.engine.params import LIVE, PARAMS
from musicsteer.probes import analyze as analyze_module
from musicsteer.probes import extract as extract_module
from musicsteer.probes import train as train_module
from musicsteer.probes.cache import FORMAT, KEYS
from musicsteer.probes.settings import LAYER, SEGMENT_SECONDS


def run(capsys, *args: str) -> tuple[int, str]:
    """`musicsteer probe ARGS` in process, as the real CLI runs it (argument errors exit 2)."""
    capsys.readouterr()
    try:
        code = main(["probe", *args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def one_line(capsys, *args: str) -> str:
    code, err = run(capsys, *args)
    assert code == 2 and err.startswith("musicsteer: error: ") and err.count("\n") == 1, err
    assert len(err) < 400, err  # the value is quoted bounded
    return err


@pytest.fixture
def acts_dir(tmp_path):
    """A finished activations folder of 2 layers, written by hand (no model needed)."""
    root = tmp_path / "acts"
    root.mkdir()
    rng = np.random.default_rng(0)
    segments = [[f"{label}/{i}.wav", label, 0, 100] for label in ("a", "b") for i in range(10)]
    manifest = {"format": FORMAT, "settings": {"model": "tiny:x", "segment_seconds": 2.0, "prompt": "",
                                               "dtype": "float32"},
                "model_name": "tiny", "num_layers": 2, "d_model": 8, "labels": ["a", "b"], "dataset": "sha256:x",
                "files": 20, "skipped": [], "segments": segments, "complete": True}
    (root / "manifest.json").write_text(json.dumps(manifest))
    for key in KEYS:
        np.save(root / f"{key}.npy", rng.normal(size=(20, 2, 8)).astype(np.float32))
    return root


@pytest.fixture
def no_training(monkeypatch):
    def trained(*args, **kwargs):
        raise AssertionError("a probe was trained before the bad value was refused")
    monkeypatch.setattr(train_module, "train_all", trained)


@pytest.fixture
def no_model(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad value was refused")
    monkeypatch.setattr(extract_module, "load_model", loaded)


@pytest.mark.parametrize(("value", "message"), [
    ("0.001", "--segment-seconds must be at least 0.1 and at most 30, got 0.001"),
    ("31", "--segment-seconds must be at least 0.1 and at most 30, got 31"),
    ("0", "--segment-seconds must be at least 0.1"),
    ("inf", "--segment-seconds must be finite"),
])
def test_segment_seconds_has_its_own_bounds_and_name(capsys, tmp_path, value, message) -> None:
    err = one_line(capsys, "extract", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "tiny",
                   "--segment-seconds", value)
    assert message in err and "init_seconds" not in err, err


def test_segment_seconds_derives_from_the_window_row() -> None:
    assert SEGMENT_SECONDS.high == PARAMS["window_seconds"].default and SEGMENT_SECONDS.low >= 0.1


@pytest.mark.parametrize(("prompt", "message"), [
    ("x" * 100_000, "--prompt is 100000 characters long; the most is 500"),
    ("a\x01b", "--prompt holds a control character"),
])
def test_extract_prompt_is_held_to_the_prompt_row(capsys, tmp_path, prompt, message) -> None:
    err = one_line(capsys, "extract", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "tiny",
                   "--prompt", prompt)
    assert message in err, err
    assert LIVE["prompt"].size == 500


def test_extract_library_checks_every_value_before_the_model_loads(tmp_path, no_model) -> None:
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        (data / label / "x.wav").write_bytes(b"")
    out = str(tmp_path / "o")
    assert "--segment-seconds" in one_line_error(extract_module.extract, str(data), "tiny", out, 0.001)
    assert "--prompt" in one_line_error(extract_module.extract, str(data), "tiny", out, 2.0, "x" * 501)
    assert "--prompt" in one_line_error(extract_module.extract, str(data), "tiny", out, 2.0, "\x1b[31m")
    assert "--batch" in one_line_error(extract_module.extract, str(data), "tiny", out, 2.0, "", 0)
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(extract_module.extract, str(data), "tiny", str(tmp_path / "file"), 2.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(extract_module.extract, str(data), "tiny", str(tmp_path / "full"), 2.0)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "d" * 5000], "cannot use --data"),
    (["--out", "o" * 5000], "cannot use --out"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_extract_paths_and_counts_are_one_line(capsys, tmp_path, args, message) -> None:
    flags = {"--data": str(tmp_path), "--out": str(tmp_path / "o"), "--model": "tiny"}
    flags.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert message in one_line(capsys, "extract", *[part for pair in flags.items() for part in pair])


def test_train_layer_is_checked_against_the_activations_before_training(capsys, acts_dir, tmp_path,
                                                                       no_training) -> None:
    out = str(tmp_path / "v.safetensors")
    err = one_line(capsys, "train", str(acts_dir), "--out", out, "--layer", "7")
    assert "--layer 7 out of range; the activations have layers 0-1" in err
    err = one_line(capsys, "train", str(acts_dir), "--out", out, "--layer", "9" * 5000)
    assert "--layer" in err and "Exceeds the limit" not in err
    assert "--layer must be at least 0" in one_line(capsys, "train", str(acts_dir), "--out", out, "--layer", "-1")
    assert "--layer" in one_line(capsys, "train", str(acts_dir), "--out", out, "--layer", "1.5")
    assert "--layer 2 out of range" in one_line_error(train_module.train, str(acts_dir), out, layer=2)
    assert "--layer" in one_line_error(train_module.train, str(acts_dir), out, layer="x")
    assert not (tmp_path / "v.safetensors").exists()


def test_train_out_and_numbers_are_checked_before_training(capsys, acts_dir, tmp_path, no_training) -> None:
    assert "is a folder" in one_line(capsys, "train", str(acts_dir), "--out", str(tmp_path))
    assert "does not exist" in one_line(capsys, "train", str(acts_dir), "--out", str(tmp_path / "no" / "v.st"))
    assert "--test-fraction must be at least 0.01" in one_line(
        capsys, "train", str(acts_dir), "--out", str(tmp_path / "v"), "--test-fraction", "0")
    assert "cannot use activations folder" in one_line(capsys, "train", "a" * 5000, "--out", str(tmp_path / "v"))
    assert "unknown method" in one_line_error(train_module.train, str(acts_dir), str(tmp_path / "v"), "svm")


def test_analyze_checks_its_values_before_reading(tmp_path) -> None:
    assert "--test-fraction" in one_line_error(analyze_module.analyze, str(tmp_path), str(tmp_path / "r"),
                                               test_fraction=1.0)
    assert "unknown method" in one_line_error(analyze_module.analyze, str(tmp_path), str(tmp_path / "r"),
                                              method="svm")
    assert "--seed" in one_line_error(analyze_module.analyze, str(tmp_path), str(tmp_path / "r"), seed=-1)


def test_train_still_trains_a_valid_layer(acts_dir, tmp_path) -> None:
    result, path = train_module.train(str(acts_dir), str(tmp_path / "v.safetensors"), layer="1")
    assert path.is_file() and len(result.accuracy) == 2
    assert LAYER.parse("best") == "best" and LAYER.parse("1") == 1
