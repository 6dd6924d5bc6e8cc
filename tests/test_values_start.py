"""What start accepts, first use must not refuse (issue 28, item 4): a value is judged once, by one rule.

- A folder or file written later (takes started live, --presets saved from a surface, a probe's or
  eval's --out, a render's --out) is tried at start as the work will use it: a file made and removed
  (engine/files.py). Root passes every permission bit, so only a real read-only mount shows it: a tmpfs
  mounted `-o ro` (the tests run as root, as CI does).
- A probe's class name is a vector's name: held to the rule every surface selects a vector by.
- A number in a YAML file is read as written, by the CLI's rule (controllers/yaml_file.py): `016` is 16,
  not YAML 1.1's octal 14; `1_0`, `0x10`, `1:30` are refused naming the line, not read as 10, 16, 90.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error

from musicsteer.controllers.automation import parse_automation
from musicsteer.controllers.config import parse_config
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.files import writable_file
from musicsteer.probes.cache import FORMAT, KEYS


@contextlib.contextmanager
def read_only(mount: Path) -> Iterator[Path]:
    """A real read-only file system at `mount` (tmpfs -o ro; needs root, as the disk-full tests do)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a read-only tmpfs (needs root): {done.stderr.strip()}", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_record_dir_is_refused_at_start(vectors_file, tmp_path, capsys) -> None:
    """The issue's example: `--record-dir` on a read-only disk was accepted, and the performer learned of it
    at the first record press, mid-set."""
    with read_only(tmp_path / "ro") as ro:
        line = cli_error(["play", "--model", "tiny", "--device", "cpu", "--output-device", "null", "--no-status",
                          "--osc-port", "0", "--seconds", "1", "--record-dir", str(ro)], capsys)
        assert str(ro) in line and "not writable" in line, line


def test_every_output_written_later_is_tried_at_start(vectors_file, tmp_path, capsys) -> None:
    """The kind, walked: every file or folder a command writes after it has started."""
    acts = _acts(tmp_path / "acts", ("a", "b"))
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        sf.write(data / label / "0.wav", np.zeros(32000, np.float32), 32000)
    with read_only(tmp_path / "ro") as ro:
        play = ["play", "--model", "tiny", "--device", "cpu", "--output-device", "null", "--no-status",
                "--osc-port", "0", "--seconds", "1"]
        render = ["render", "--model", "tiny", "--device", "cpu", "--seconds", "1"]
        cases = [
            [*play, "--presets", str(ro / "presets.yaml")],
            [*play, "--record", str(ro / "take.wav")],
            [*play, "--codes-out", str(ro / "codes.npy")],
            [*render, "--out", str(ro / "x.wav")],
            [*render, "--out", str(ro / "new" / "x.wav")],
            [*render, "--out", str(tmp_path / "x.wav"), "--codes-out", str(ro / "codes.npy")],
            ["probe", "extract", "--data", str(data), "--model", "tiny", "--device", "cpu", "--out", str(ro / "acts")],
            ["probe", "train", str(acts), "--out", str(ro / "v.safetensors")],
            ["probe", "analyze", str(acts), "--out", str(ro / "report")],
            ["eval", "--model", "tiny", "--vectors", vectors_file, "--out", str(ro / "eval")],
            ["midi-learn", "--port", "x", "--params", "alpha", "--out", str(ro / "m.yaml")],
        ]
        for argv in cases:
            line = cli_error(argv, capsys)
            assert str(ro) in line and "not writable" in line, (argv, line)
        from musicsteer.engine.files import writable_folder

        with pytest.raises(MusicsteerError, match="not writable"):
            writable_folder(ro, "recordings folder")
    assert writable_folder(tmp_path, "x") == tmp_path and writable_file(tmp_path / "a" / "b.wav", "x", True)
    assert not list(tmp_path.glob(".musicsteer-write-test-*"))  # the trial leaves nothing behind


def _acts(root: Path, labels: tuple[str, ...]) -> Path:
    """A finished activations folder of 2 layers with these labels, written by hand (no model needed)."""
    root.mkdir()
    segments = [[f"{i}.wav", label, 0, 100] for label in labels for i in range(10)]
    manifest = {"format": FORMAT, "settings": {"model": "tiny:x", "segment_seconds": 2.0, "prompt": "",
                                               "dtype": "float32"},
                "model_name": "tiny", "num_layers": 2, "d_model": 8, "labels": list(labels), "dataset": "sha256:x",
                "files": len(segments), "skipped": [], "segments": segments, "complete": True}
    (root / "manifest.json").write_text(json.dumps(manifest))
    for key in KEYS:
        np.save(root / f"{key}.npy", np.random.default_rng(0).normal(size=(len(segments), 2, 8)).astype(np.float32))
    return root


LONG = "l" * 65  # one past NAME_CHARS: no surface could select a vector of that name


@pytest.mark.parametrize("label, words", [(LONG, "the most is 64"), ("hip,hop", "hold , or ="),
                                          ("a=b", "hold , or ="), (" jazz", "space")])
def test_probe_class_names_are_names_every_surface_can_select(label: str, words: str, tmp_path, capsys) -> None:
    """The issue's example: `probe extract/train` took a class folder name longer than the 64 characters
    every surface takes for a vector name, and wrote it into the vectors file."""
    data = tmp_path / "data"
    for name in ("rock", label):
        (data / name).mkdir(parents=True)
        sf.write(data / name / "0.wav", np.zeros(32000, np.float32), 32000)
    line = cli_error(["probe", "extract", "--data", str(data), "--model", "tiny", "--device", "cpu",
                      "--segment-seconds", "1", "--out", str(tmp_path / "acts")], capsys)
    assert words in line, line
    assert not (tmp_path / "acts" / "manifest.json").exists()  # refused before any work
    manifest = tmp_path / "data.csv"  # a CSV manifest's labels are held to the same rule (its cells are stripped)
    manifest.write_text(f"path,label\ndata/rock/0.wav,rock\n\"data/{label}/0.wav\",\"{label}\"\n")
    assert label != label.strip() or words in cli_error(
        ["probe", "extract", "--data", str(manifest), "--model", "tiny", "--device", "cpu", "--segment-seconds", "1",
         "--out", str(tmp_path / "acts")], capsys)
    # a cache extracted before the rule: train refuses before training, and writes nothing
    acts = _acts(tmp_path / "old-acts", ("rock", label))
    assert words in cli_error(["probe", "train", str(acts), "--out", str(tmp_path / "v.safetensors")], capsys)
    assert not (tmp_path / "v.safetensors").exists()


def test_yaml_numbers_are_read_as_written() -> None:
    """The issue's examples: `cc: 016` bound CC 14 (YAML 1.1 octal), `cc: 018` CC 18, `alpha: 1_0` became
    10 (the CLI refuses `--alpha 1_0`). Now one rule, the CLI's: 016 is sixteen, as written."""
    def cc(text: str) -> int:
        return parse_config(f"midi:\n  mappings:\n    - {{cc: {text}, param: alpha}}\n", "set.yaml").midi.mappings[0].cc

    assert (cc("016"), cc("018"), cc("16"), cc("+16"), cc("16.0")) == (16, 18, 16, 16, 16)
    defaults = {"seed: 016": 16, "seed: 1e3": 1000, "alpha: .5": 0.5, "alpha: +1": 1.0, "alpha: -0.25": -0.25,
                "prompt: 0x10": "0x10", "prompt: yes": "yes", "prompt: 1_0": "1_0", "prompt: '016'": "016"}
    for text, value in defaults.items():
        got = parse_config(f"defaults:\n  {text}\n", "set.yaml").defaults
        key = text.split(":")[0]
        assert got[key] == value and type(got[key]) is type(value), (text, got)
    for text in ("prompt: 016", "alpha: 1_0", "seed: 0x10", "seed: 0o17", "seed: 0b101", "seed: 1:30", "alpha: .inf",
                 "alpha: .nan", "alpha: -.inf", "seed: 1e999", "alpha: !!float abc", "seed: !!int 1.5"):
        with pytest.raises(MusicsteerError) as info:
            parse_config(f"defaults:\n  {text}\n", "set.yaml")
        message = str(info.value)
        assert message.startswith("set.yaml line 2: ") and "\n" not in message, (text, message)
    for event in ("- {at: 1:30, alpha: 0.5}", "- {at: 0x10, alpha: 0.5}", "- {at: 1, alpha: 1_0}"):
        with pytest.raises(MusicsteerError, match="auto.yaml line 1: "):
            parse_automation(event + "\n", "auto.yaml")
    assert parse_automation("- {at: 016, alpha: 0.5}\n")[0].at == 16
    # a mapping's keys are names as written: a preset `016`, a vector `1e3` in a mix
    config = parse_config("presets:\n  016: {mix: {1e3: 1, yes: 1}, alpha: 0.5}\n", "set.yaml")
    assert list(config.presets) == ["016"] and config.presets["016"].mix == {"1e3": 1.0, "yes": 1.0}


def test_the_cli_and_yaml_agree_on_every_number_form(tmp_path, capsys) -> None:
    """One rule: a number form the CLI refuses is refused by a config's defaults, and one it reads is read
    the same."""
    from musicsteer.engine.params import PARAMS

    row = PARAMS["alpha"]
    for text in ("1_0", "0x10", "0o17", "1:30", ".inf", "nan", "١", "0.5", ".5", "+1", "1e-1", "016"):
        try:
            cli = row.parse(text)
        except MusicsteerError:
            cli = None
        try:
            yaml_value = parse_config(f"defaults:\n  alpha: {text}\n", "set.yaml").defaults["alpha"]
        except MusicsteerError:
            yaml_value = None
        assert cli == yaml_value, (text, cli, yaml_value)


def test_an_output_name_that_is_not_utf8_is_refused_at_start(tmp_path, capsys) -> None:
    # Found by the hostile review: `render --out "$(printf 'caf\351').wav"` rendered, then libsndfile's open
    # raised UnicodeEncodeError (a traceback after the work); a --record-dir so named was accepted and every
    # take started in it failed (OSC got no answer at all). os.open takes such a name, so it is refused by name.
    latin1 = str(tmp_path / "caf\udce9")  # what Python makes of a Latin-1 shell's byte 0xe9 in argv
    line = cli_error(["render", "--model", "tiny", "--seconds", "0.2", "--out", latin1 + ".wav"], capsys)
    assert "the name is not UTF-8" in line
    Path(latin1).mkdir()
    line = cli_error(["play", "--model", "tiny", "--output-device", "null", "--seconds", "1", "--web", "0",
                      "--record-dir", latin1], capsys)
    assert "recordings folder" in line and "the name is not UTF-8" in line
    for path in (latin1 + ".wav", Path(latin1) / "take.wav"):
        with pytest.raises(MusicsteerError, match="not UTF-8"):
            writable_file(path, "--codes-out")
