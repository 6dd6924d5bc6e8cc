"""Text that is not valid Unicode is refused in one line wherever it enters (issue 28, item 1).

A lone UTF-16 surrogate is what JSON's `\\ud800` decodes to (the page, a session log, a vectors file's
metadata, a YAML file's double-quoted `"\\ud800"`) and what a byte that is not UTF-8 in argv or a file
name becomes (Python's surrogateescape). It must never reach the tokenizer, a file or a YAML writer: a
running session refuses it and plays on, a start refuses it in one line with exit 2. And what passed the
rule is written so that it reads back as itself (the presets file). Everything here is real: a
`musicsteer play` process on the tiny model with the null device, a real WebSocket and a real UDP
socket, real files and folders.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import websockets
from conftest import cli_error, random_vectors

from musicsteer.controllers.automation import parse_automation
from musicsteer.controllers.config import parse_config
from musicsteer.controllers.presets import load_presets
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.vectors import FORMAT, SteeringVectors

SURROGATE = "\ud800"  # what JSON's "\ud800" decodes to
ARGV_BYTE = "caf\udce9 jazz"  # `printf 'caf\351 jazz'` in argv, decoded with surrogateescape
# Awkward but valid names: each must read back from the presets file exactly as it was saved.
AWKWARD = ["🎷 jazz", "a\u2028b", "x\x85y", "\ufeffbom", "'q\"uote", "*star", "&anchor", "yes", "016", "1e3",
           "null", "~", "- dash", "#hash", "? q", "a: b", "on", "0x10", "1:30", ".inf", "true", " padded "]


def start_play(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """`musicsteer play` on the tiny model and the null device, until it names its surfaces."""
    proc = subprocess.Popen([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu",
                             "--output-device", "null", "--no-status", *args],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    told: dict[str, str] = {}
    end = time.monotonic() + 180
    while not {"web", "osc"} <= set(told) and time.monotonic() < end:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "play ended before it served: " + proc.stderr.read()
        if "control surface:" in line:
            told["web"] = re.search(r":(\d+)/", line).group(1)
        if "listening for OSC on" in line:
            told["osc"] = line.strip().rsplit(":", 1)[1]
    assert {"web", "osc"} <= set(told), told
    return proc, told


def osc_string(address: str, *args: bytes) -> bytes:
    """An OSC message of raw string arguments (bytes as sent: python-osc could not build a non-UTF-8 one)."""
    def pad(raw: bytes) -> bytes:
        raw += b"\0"
        return raw + b"\0" * (-len(raw) % 4)
    return pad(address.encode()) + pad(b"," + b"s" * len(args)) + b"".join(pad(a) for a in args)


def osc_replies(sock: socket.socket) -> list[bytes]:
    out = []
    end = time.monotonic() + 10
    while time.monotonic() < end and not any(b"/musicsteer/error" in r for r in out):
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            continue
    return out


def test_the_page_and_osc_refuse_invalid_text_the_session_plays_on_and_presets_read_back(tiny, tmp_path) -> None:
    """The issue's examples: a prompt `jazz \\ud800` from the page (was: TypeError on the generation thread,
    exit 1) and a preset saved under `\\ud800` (was: written as "\\uD800", and the next start refused the
    file). Here both are one refusal each, the take records on, and every awkward valid name saved from the
    page reads back from --presets exactly, by the reader and by the next `play --presets`."""
    vectors = str(random_vectors(tiny, ("rock", "jazz")).save(tmp_path / "v.safetensors"))
    presets = tmp_path / "presets.yaml"
    proc, told = start_play(tmp_path, "--vectors", vectors, "--steer", "rock", "--presets", str(presets),
                            "--web", "127.0.0.1:0", "--osc-port", "0", "--record", "take.wav", "--seconds", "600")

    async def page() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{told['web']}/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            # json.dumps writes a lone surrogate as the escape \ud800, as a hostile page would send it
            await ws.send(json.dumps({"type": "set", "param": "prompt", "value": "jazz " + SURROGATE}))
            await ws.send(json.dumps({"type": "save", "name": SURROGATE}))
            await ws.send(json.dumps({"type": "set", "param": "mix", "value": {SURROGATE: 1.0}}))
            await ws.send(json.dumps({"type": "record", "action": "start", "name": SURROGATE + ".wav"}))
            for name in AWKWARD:
                await ws.send(json.dumps({"type": "save", "name": name}))
            await ws.send(json.dumps({"type": "set", "param": "prompt", "value": "jazz"}))
            replies: list[dict] = []
            while sum(r["type"] in ("error", "saved") for r in replies) < 4 + len(AWKWARD):
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            return replies

    try:
        replies = asyncio.run(page())
        errors = [r["text"] for r in replies if r["type"] == "error"]
        assert len(errors) == 4 and all("not valid Unicode" in e for e in errors), errors
        assert sorted(r["name"] for r in replies if r["type"] == "saved") == sorted(AWKWARD)
        # OSC: a string argument that is not UTF-8 (a Latin-1 controller), over a real UDP socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.2)
            sock.sendto(osc_string("/musicsteer/prompt", b"caf\xe9 jazz"), ("127.0.0.1", int(told["osc"])))
            assert any(b"/musicsteer/error" in r for r in osc_replies(sock))
        time.sleep(1.0)  # the session plays on after every refusal
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert sf.info(str(tmp_path / "take.wav")).frames > 0
    saved = load_presets(presets)
    assert list(saved) == AWKWARD and all(p.mix == {"rock": 1.0} for p in saved.values())
    again = subprocess.run([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu",
                            "--output-device", "null", "--no-status", "--vectors", vectors, "--presets", str(presets),
                            "--osc-port", "0", "--seconds", "0.2"], capture_output=True, text=True, timeout=180,
                           cwd=tmp_path)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr


def test_the_presets_writer_reads_back_what_it_wrote() -> None:
    """yaml_file.dump quotes and escapes what a reader would take otherwise (a number, a boolean, null, an
    alias, a line break YAML folds): the same names and vector names come back, by our reader and by a
    YAML 1.1 one."""
    import yaml

    from musicsteer.controllers.yaml_file import YamlTree, dump

    data = {"presets": {name: {"mix": {name: 1.0}, "alpha": 0.5} for name in AWKWARD}}
    text = dump(data)
    tree = YamlTree(text, "presets.yaml")
    assert tree.value(tree.root) == data
    assert yaml.safe_load(text) == data


def _vectors_with_label(tiny, tmp_path: Path, label: str) -> str:
    """A vectors file whose metadata names `label` (written by hand, as another tool or an old version
    could; json.dumps writes a surrogate as the escape \\ud800, which json.loads reads back as one)."""
    import safetensors.torch

    good = random_vectors(tiny, ("rock", "jazz"))
    meta = {**good._metadata(), "labels": json.dumps(["rock", label])}
    assert meta["format"] == FORMAT
    path = tmp_path / "hand.safetensors"
    path.write_bytes(safetensors.torch.save({k: t.contiguous() for k, t in good.directions.items()}, metadata=meta))
    return str(path)


def test_every_start_path_refuses_text_that_is_not_unicode_in_one_line(tiny, tmp_path, capsys) -> None:
    """The kind, walked: CLI argv (each text option), a config's every text (defaults, presets, mappings,
    osc, midi), an automation file, a vectors file's labels, probe class names, eval's texts, midi-learn's."""
    out = str(tmp_path / "x.wav")
    render = ["render", "--model", "tiny", "--device", "cpu", "--seconds", "1", "--out", out]
    vectors = str(random_vectors(tiny, ("rock", "jazz")).save(tmp_path / "v.safetensors"))
    for bad in (SURROGATE, ARGV_BYTE):
        assert "not valid Unicode" in cli_error([*render, "--prompt", bad], capsys)
        assert "not valid Unicode" in cli_error([*render, "--vectors", vectors, "--steer", bad], capsys)
        assert "not valid Unicode" in cli_error([*render, "--vectors", vectors, "--steer", f"rock=0.5,{bad}=0.5"],
                                                capsys)
    # the vectors file's own labels (JSON metadata may hold "\ud800")
    for label, words in ((SURROGATE, "not valid Unicode"), ("x" * 65, "the most is 64")):
        hand = _vectors_with_label(tiny, tmp_path, label)
        assert words in cli_error([*render, "--vectors", hand, "--steer", "rock"], capsys)
    # YAML: the escape "\ud800" in double quotes (libyaml refuses it as it reads; PyYAML's own reader, used
    # where libyaml is missing, decodes it to a lone surrogate, which the text rule refuses): one line each
    esc = '"\\ud800"'
    configs = [f"defaults: {{prompt: {esc}}}", f"defaults: {{steer: {esc}}}",
               f"presets: {{{esc}: {{mix: rock, alpha: 0.5}}}}", f"presets: {{a: {{mix: {{{esc}: 1}}, alpha: 0.5}}}}",
               f"midi: {{mappings: [{{cc: 1, steer: {esc}}}]}}",
               f"midi: {{mappings: [{{cc: 1, param: crossfade, from: {esc}, to: rock}}]}}",
               f"midi: {{port: {esc}}}", f"midi: {{port: x, output: {esc}}}", f"osc: {{host: {esc}}}"]
    for text in configs:
        with pytest.raises(MusicsteerError) as info:
            parse_config(text + "\n", "set.yaml")
        assert "set.yaml line 1" in str(info.value) and "\n" not in str(info.value), text
    for event in (f"- {{at: 0, prompt: {esc}}}", f"- {{at: 0, steer: {esc}}}", f"- {{at: 0, morph: {esc}}}"):
        with pytest.raises(MusicsteerError, match="auto.yaml line 1: "):
            parse_automation(event + "\n", "auto.yaml")
    # eval's texts, before any model loads
    evaluate = ["eval", "--model", "tiny", "--vectors", vectors, "--out", str(tmp_path / "ev")]
    for flag, value in (("--pairs", f"rock:{SURROGATE}"), ("--labels", f"rock,{SURROGATE}"),
                        ("--template", "{} " + SURROGATE), ("--source-prompt", "{source} " + SURROGATE),
                        ("--blend-prompt", SURROGATE)):
        assert "not valid Unicode" in cli_error([*evaluate, flag, value], capsys), flag
    # midi-learn: a vector name in --notes, the port's name (both would be written to its file)
    learn = ["midi-learn", "--out", str(tmp_path / "m.yaml"), "--params", "alpha"]
    assert "not valid Unicode" in cli_error([*learn, "--port", "x", "--notes", SURROGATE], capsys)
    assert "not valid Unicode" in cli_error([*learn, "--port", ARGV_BYTE], capsys)


def test_the_issue_render_example_through_the_console_script(tmp_path) -> None:
    """`render --prompt "$(printf 'caf\\351 jazz')"`: argv holds the byte 0xE9 (was: a traceback, exit 1)."""
    done = subprocess.run([b"musicsteer", b"render", b"--model", b"tiny", b"--device", b"cpu", b"--seconds", b"1",
                           b"--out", os.fsencode(tmp_path / "x.wav"), b"--prompt", b"caf\xe9 jazz"],
                          capture_output=True, timeout=180)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and err.count("\n") == 1 and err.startswith("musicsteer: error: "), err
    assert not (tmp_path / "x.wav").exists()


def test_a_replayed_log_whose_prompt_is_not_unicode_is_one_line(tiny, tmp_path, capsys) -> None:
    """A session log with `"prompt": "\\ud800"` (valid JSON): `render --replay` says so in one line, exit 2
    (engine/session_log.read_log judges every text through params.check_text)."""
    take = tmp_path / "take.wav"
    done = subprocess.run([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu",
                           "--output-device", "null", "--no-status", "--no-osc", "--seconds", "0.5", "--record",
                           str(take), "--prompt", "jazz"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    log = take.with_suffix(".jsonl")
    text = log.read_text(encoding="utf-8")
    assert '"prompt": "jazz"' in text
    log.write_text(text.replace('"prompt": "jazz"', '"prompt": "\\ud800"'), encoding="utf-8")
    line = cli_error(["render", "--replay", str(log), "--out", str(tmp_path / "again.wav")], capsys)
    assert "Unicode" in line


def test_probe_class_names_that_are_not_unicode_are_one_line_before_the_model(tmp_path, capsys) -> None:
    """A class folder whose name holds a byte that is not UTF-8 (a Latin-1 disk): one line naming it, exit 2,
    before anything loads (was: written into the vectors file as a name no surface could send)."""
    data = tmp_path / "data"
    for name in (b"rock", b"caf\xe9"):
        folder = os.fsencode(data) + b"/" + name
        os.makedirs(folder)
        for i in range(2):  # (libsndfile takes no such name: written, then moved there)
            sf.write(tmp_path / "clip.wav", np.zeros(16000, np.float32), 16000)
            os.rename(tmp_path / "clip.wav", folder + f"/{i}.wav".encode())
    line = cli_error(["probe", "extract", "--data", str(data), "--model", "tiny", "--device", "cpu",
                      "--segment-seconds", "1", "--out", str(tmp_path / "acts")], capsys)
    assert "not valid Unicode" in line and "caf" in line
    from musicsteer.engine.vectors import check_label

    with pytest.raises(MusicsteerError, match="not valid Unicode"):
        check_label("caf\udce9")
    assert not (tmp_path / "acts" / "manifest.json").exists()


def test_a_vectors_file_label_with_a_surrogate_cannot_be_created() -> None:
    import torch

    with pytest.raises(MusicsteerError, match="not valid Unicode"):
        SteeringVectors.create({SURROGATE: torch.ones(2, 4)}, model="tiny", method="mse", best_layer=0)


def test_a_right_to_left_override_in_a_take_name_is_escaped_where_the_name_is_printed(tmp_path: Path) -> None:
    """A take named "\\u202ex.wav" (a right-to-left override, from the page or a pasted name) once printed
    raw in `recorded …`, so the terminal showed a reversed, spoofable name: every printed path escapes the
    bidirectional controls as it does control characters (engine/errors.printable)."""
    name = "\u202eVAW.evil.wav"
    proc = subprocess.run([sys.executable, "-m", "musicsteer", "render", "--model", "tiny", "--prompt", "jazz",
                           "--seconds", "0.5", "--out", name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / name).is_file()  # the file is made as named: only its printing is escaped
    printed = proc.stdout + proc.stderr
    assert "\u202e" not in printed and "\\u202eVAW.evil.wav" in printed
