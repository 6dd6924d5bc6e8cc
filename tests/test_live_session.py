"""A real `musicsteer play` process driven over real UDP: the examples' OSC score performs a
classical -> electronic -> jazz morph, every change lands in the session log with its step, and the
log replays to the same codes. Also: the example layouts and configs name only real addresses."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import cli_error

from musicsteer.cli import main
from musicsteer.controllers.config import load_config
from musicsteer.engine.session_log import read_log
from musicsteer.engine.vectors import SteeringVectors

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("classical", "electronic", "jazz", "rock")


def genre_vectors(tmp_path) -> str:
    gen = torch.Generator().manual_seed(3)
    directions = {label: torch.randn(2, 64, generator=gen) for label in LABELS}
    return str(SteeringVectors.create(directions, model="tiny", method="random", best_layer=1)
               .save(tmp_path / "genres.safetensors"))


def start_play(tmp_path, vectors: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
         "--output-device", "null", "--osc-port", "0", "--vectors", vectors, "--steer", "classical",
         "--alpha", "0.3", "--record", str(tmp_path / "set.wav"), "--codes-out", str(tmp_path / "set.npy")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.search(r"listening for OSC on 127\.0\.0\.1:(\d+)", line)
    assert match, line + proc.stderr.read()
    return proc, int(match.group(1))


def test_osc_score_morphs_logs_and_replays(tmp_path) -> None:
    proc, port = start_play(tmp_path, genre_vectors(tmp_path))
    try:
        score = subprocess.run([sys.executable, str(ROOT / "examples" / "osc_morph.py"), "--port", str(port),
                                "--speed", "12"], capture_output=True, text=True, timeout=120)
        assert score.returncode == 0, score.stderr
        assert "engine answered /musicsteer/pong" in score.stdout
        assert "<- /musicsteer/changed" in score.stdout  # subscribed feedback came back
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr

    log = read_log(tmp_path / "set.jsonl")
    params = [change.param for _, change in log.changes]
    assert params.count("mix") == 3 and "alpha" in params  # two morphs and the fusion mix
    morphs = [c for _, c in log.changes if c.param == "mix" and c.seconds > 0]
    assert [list(c.value) for c in morphs] == [["electronic"], ["jazz"]]
    steps = [step for step, _ in log.changes]
    assert steps == sorted(steps) and log.end["steps"] >= steps[-1]
    with open(tmp_path / "set.jsonl") as f:
        header = json.loads(f.readline())
    assert header["vectors_sha256"] and header["controls"]["mix"] == {"classical": 1.0}

    out = tmp_path / "replay.npy"
    assert main(["render", "--replay", str(tmp_path / "set.jsonl"), "--device", "cpu",
                 "--out", str(tmp_path / "replay.wav"), "--codes-out", str(out)]) == 0
    session_codes = np.load(tmp_path / "set.npy")
    assert log.end["frames"] < session_codes.shape[-1]  # the score's record/stop ended the take early
    assert np.array_equal(np.load(out), session_codes[:, : log.end["frames"]])


def test_osc_port_in_use_is_one_line(tmp_path) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        result = subprocess.run([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu",
                                 "--output-device", "null", "--seconds", "1", "--record", str(tmp_path / "x.wav"),
                                 "--osc-port", str(busy.getsockname()[1])], capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "in use" in lines[0], result.stderr
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.jsonl").exists()  # no empty take left


def test_open_stage_control_layout_uses_the_osc_address_space() -> None:
    from musicsteer.controllers.osc import ADDRESSES

    layout = json.loads((ROOT / "examples" / "open-stage-control.json").read_text())
    assert layout["createdWith"] == "Open Stage Control" and layout["type"] == "session"
    known = set(ADDRESSES)
    for widget in layout["content"]["widgets"]:
        assert widget["address"] in known, widget["address"]


def test_example_configs_load() -> None:
    for name in ("session.yaml", "nanokontrol2.yaml"):
        config = load_config(ROOT / "examples" / name)
        assert config.presets or config.midi


def test_example_automation_parses() -> None:
    from musicsteer.controllers.automation import load_automation

    timed = load_automation(ROOT / "examples" / "morph.yaml")
    assert [t.at for t in timed] == sorted(t.at for t in timed) and len(timed) >= 6
    assert {t.change.param for t in timed} >= {"alpha", "mix"}


def test_play_config_defaults_fill_unset_flags_and_explicit_flags_win(tmp_path) -> None:
    vectors = genre_vectors(tmp_path)
    config = tmp_path / "set.yaml"
    config.write_text("osc: {status_interval: 0.5, port: 9}\n"
                      "defaults: {prompt: a string quartet, seed: 7, steer: classical, alpha: 0.4, temperature: 0.9,\n"
                      "           guidance: 5, top_k: 50}\n"
                      "presets:\n  opening: {mix: classical, alpha: 0.4}\n")
    # --seed 0 and --guidance 3 equal the built-in defaults: given, they still win (presence decides)
    result = subprocess.run(
        [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
         "--output-device", "null", "--seconds", "1", "--vectors", vectors, "--config", str(config),
         "--alpha", "0.6", "--seed", "0", "--guidance", "3", "--osc-port", "0", "--record", str(tmp_path / "cfg.wav")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"listening for OSC on 127\.0\.0\.1:[1-9]\d*", result.stderr)  # --osc-port 0 beat port: 9
    with open(tmp_path / "cfg.jsonl") as f:
        controls = json.loads(f.readline())["controls"]
    assert controls["prompt"] == "a string quartet" and controls["temperature"] == 0.9 and controls["top_k"] == 50
    assert controls["mix"] == {"classical": 1.0} and controls["alpha"] == 0.6  # --alpha given: it wins
    assert controls["seed"] == 0 and controls["guidance"] == 3.0

    config.write_text("presets:\n  odd: {mix: polka, alpha: 0.4}\n")
    refused = subprocess.run(
        [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--output-device", "null",
         "--seconds", "1", "--vectors", vectors, "--config", str(config), "--osc-port", "0"],
        capture_output=True, text=True, timeout=120)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "polka" in lines[0], refused.stderr


def test_osc_beyond_this_machine_warns_unless_senders_are_named(tmp_path, capsys) -> None:
    """`--osc-host 0.0.0.0` (a phone or a tablet on the network) is said to be open to anyone who reaches
    the port, in one line, unless `--osc-allow` names the senders; a bad allow list is one line, exit 2."""
    base = [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
            "--output-device", "null", "--seconds", "0.3", "--osc-port", "0", "--osc-host", "0.0.0.0"]
    opened = subprocess.run(base, capture_output=True, text=True, timeout=120)
    warnings = [line for line in opened.stderr.splitlines() if "warning" in line]
    assert opened.returncode == 0 and len(warnings) == 1 and "--osc-allow" in warnings[0], opened.stderr
    named = subprocess.run([*base, "--osc-allow", "127.0.0.1,10.0.0.0/8"], capture_output=True, text=True, timeout=120)
    assert named.returncode == 0 and "warning" not in named.stderr, named.stderr
    for allow, words in (("not-an-ip", "allow list"), ("", "needs at least one")):
        assert words in cli_error([*base[3:], "--osc-allow", allow], capsys)
