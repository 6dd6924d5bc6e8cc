"""Every parameter × every path, with hostile values (issue: one parameter table, bounded everywhere).

Start-up paths — CLI flags, a config's `defaults:`, automation files, replayed session logs — must
answer a bad value with one line and exit 2, never a silent clamp and never a traceback. The live path
— OSC messages and every element of a bundle, over a real UDP socket into a running, recording
session on the tiny model — must refuse or clamp each one, report it to its sender, count it by kind,
keep playing and recording, and still apply the next valid change.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time

import mido
import pytest
import soundfile as sf
from conftest import random_vectors
from pythonosc.osc_message_builder import OscMessageBuilder
from test_osc import Client, until

from musicsteer import __version__
from musicsteer.cli import main
from musicsteer.controllers.automation import parse_automation
from musicsteer.controllers.config import parse_config
from musicsteer.controllers.mappings import KNOB_PARAMS
from musicsteer.controllers.midi import MidiInput, MidiMapper, values_reader
from musicsteer.controllers.osc import OscServer
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator
from musicsteer.engine.params import AT, GLIDE, LIVE, PARAMS, Param
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log

COMMAND = {"seconds": "render", "init_seconds": "render", "buffer": "play", "prebuffer": "play", "blocksize": "play",
           "slew": "play", "when_slow": "play", "osc_port": "play"}


def bad_texts(row: Param) -> list[str]:
    """Text a user could type for this row that the row must refuse at start-up."""
    if row.kind in ("number", "whole"):
        out = ["nan", "inf", "-inf", "1e308", "-1e308", "1" + "0" * 400, "abc", "", "0x10"]
        out += [f"{row.low - 1:g}" if not row.low_open else f"{row.low:g}", f"{row.high * 10 + 1:g}"]
        return out + (["2.5"] if row.kind == "whole" else [])
    if row.kind == "choice":
        return ["nope", "", "RESIDUAL"]
    if row.kind == "text":
        return ["x" * (row.size + 1), "bell\x07"]
    return ["jazz=nan", "jazz=inf", "jazz=1e308", "jazz=abc", "=1", ",".join(f"v{i}" for i in range(row.size + 1)),
            "jazz=0", ""]


def exit_code(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors, made one line by options.Parser
        code = exc.code
    return code, capsys.readouterr().err


CLI_ROWS = [row for row in PARAMS.values() if row.cli]


@pytest.mark.parametrize("row", CLI_ROWS, ids=lambda r: r.name)
def test_cli_flags_refuse_bad_values_in_one_line_with_exit_2(row: Param, capsys, tmp_path) -> None:
    command = COMMAND.get(row.name, "render")
    base = [command, "--model", "tiny", "--device", "cpu"] + (
        ["--out", str(tmp_path / "x.wav"), "--seconds", "1"] if command == "render" and row.name != "seconds"
        else ["--out", str(tmp_path / "x.wav")] if command == "render" else ["--output-device", "null", "--no-osc"])
    for text in bad_texts(row):
        code, err = exit_code([*base, row.cli, text], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("musicsteer: error: "), (row.cli, text, err)
        assert "Traceback" not in err and len(lines[0]) < 400
    assert not (tmp_path / "x.wav").exists()  # refused before anything ran


def test_cli_examples_of_the_issue(capsys, tmp_path) -> None:
    out = ["--out", str(tmp_path / "x.wav")]
    for argv, words in (
        (["render", "--temperature", "-3", "--seconds", "1", *out], "temperature must be at least 0"),
        (["render", "--guidance", "99", "--seconds", "1", *out], "guidance must be at least 0 and at most 30"),
        (["render", "--seconds", "inf", *out], "seconds must be finite"),
        (["play", "--buffer", "inf"], "buffer must be finite"),
        (["play", "--blocksize", "0"], "blocksize must be at least 16"),
        (["play", "--blocksize", "1000000000"], "at most 16384"),
        (["play", "--slew", "inf"], "slew must be finite"),
        (["play", "--slew", "nan"], "slew must be finite"),
        (["render", "--top-k", "abc", *out], "top_k needs a whole number, got 'abc'"),
    ):
        code, err = exit_code(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and words in err, (argv, err)


def test_a_flag_nothing_would_read_is_refused_not_ignored(capsys, tmp_path) -> None:
    """Each of these ran with exit 0 and changed nothing (found by trying every flag beside the others)."""
    out, ans = ["--out", str(tmp_path / "x.wav"), "--seconds", "1"], str(tmp_path / "answers.csv")
    live = ["play", "--output-device", "null"]
    for argv, words in (
        # a render has no live control: steering flags need a mix (or an automation file that sets one)
        (["render", *out, "--steer-both"], "--steer-both needs --vectors FILE"),
        (["render", *out, "--vectors", "v.safetensors", "--alpha", "0.9"], "--alpha needs --steer or --automation"),
        (["render", *out, "--site", "attention"], "--site needs --vectors FILE"),
        (["render", *out, "--automation", "a.yaml", "--alpha", "0.9"], "--alpha needs --vectors FILE"),
        (["render", *out, "--vectors", "v.safetensors", "--ease-at", "0.5"], "--ease-at needs --steer or --auto"),
        ([*live, "--alpha", "0"], "--alpha needs --vectors FILE"),  # 0 is a value given
        ([*live, "--no-osc", "--osc-port", "0"], "--osc-port needs OSC (drop --no-osc)"),
        ([*live, "--steer", "rock"], "--steer needs --vectors FILE"),
        # no live surface (no OSC, MIDI in or page): nothing can set a mix later, and no take can start
        ([*live, "--no-osc", "--vectors", "v.safetensors", "--alpha", "0.5"], "--alpha needs --steer, or OSC, --midi"),
        ([*live, "--no-osc", "--record-dir", str(tmp_path)], "--record-dir needs OSC or --web"),
        ([*live, "--no-osc", "--overwrite"], "--overwrite needs --record, or OSC or --web"),
        ([*live, "--no-osc", "--vectors", "v.safetensors", "--presets", "p.yaml"], "--presets needs OSC, MIDI in"),
        ([*live, "--steer-rule", "add"], "--steer-rule needs --vectors FILE"),
        ([*live, "--slew", "2"], "--slew needs --vectors FILE"),
        (["render", *out, "--meter-every", "5"], "--meter-every needs --meter or --ease-at"),
        ([*live, "--meter-layer", "99"], "--meter-layer needs --meter or --ease-at"),
        (["render", *out, "--init-seconds", "3"], "--init-seconds needs --init-audio FILE"),
        ([*live, "--no-osc", "--osc-port", "9123"], "--osc-port needs OSC (drop --no-osc)"),
        ([*live, "--no-osc", "--osc-host", "0.0.0.0"], "--osc-host needs OSC (drop --no-osc)"),
        ([*live, "--no-osc", "--osc-allow", "10.0.0.1"], "--osc-allow needs OSC (drop --no-osc)"),
        ([*live, "--no-osc", "--oscquery", "0"], "--oscquery needs OSC (drop --no-osc)"),
        (["bench", "--steps", "5", "--drift-steps", "10"], "--drift-steps measures a --dtype bfloat16|float16"),
        (["bench", "--drift-steps", "5", "--dtype", "FP32"], "--drift-steps measures a --dtype bfloat16|float16"),
        (["bench", "--extract", "5", "--quantize", "int8"], "--quantize applies to the default run or --soak"),
        (["bench", "--extract", "5", "--threads", "2"], "--threads applies to the default run or --soak"),
        (["eval", "--out", str(tmp_path / "e"), "score-2afc", ans], "--out is an option of the evaluation run"),
        (["eval", "--n", "5", "score-2afc", ans], "--n is an option of the evaluation run"),
        (["eval", "--dtype", "float32", "score-2afc", ans], "--dtype is an option of the evaluation run"),
    ):
        code, err = exit_code([*argv, "--model", "tiny", "--device", "cpu"] if argv[0] != "eval" else argv, capsys)
        assert code == 2 and err.count("\n") == 1 and words in err, (argv, err)
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "e").exists()


YAML_ROWS = [row for row in PARAMS.values() if row.keys]


@pytest.mark.parametrize("row", YAML_ROWS, ids=lambda r: r.name)
def test_config_defaults_refuse_bad_values_naming_the_line(row: Param) -> None:
    values = [".nan", ".inf", "-.inf", "1.0e+308", "[1, [2, [3]]]", "!!binary AAAA"] + [
        json.dumps(text) for text in bad_texts(row) if text]
    for value in values:
        text = f"defaults:\n  {row.keys[0]}: {value}\n"
        try:
            parse_config(text, source="c.yaml")
        except MusicsteerError as err:
            assert str(err).startswith("c.yaml line 2: ") and "\n" not in str(err) and len(str(err)) < 400, err
            continue
        raise AssertionError(f"defaults {row.keys[0]}: {value} was accepted")


AUTOMATION_ROWS = [row for row in LIVE.values()]


@pytest.mark.parametrize("row", AUTOMATION_ROWS, ids=lambda r: r.name)
def test_automation_refuses_bad_values_naming_the_line(row: Param) -> None:
    for value in [".nan", ".inf", "1.0e+308", "[[[[]]]]", *(json.dumps(t) for t in bad_texts(row) if t)]:
        text = f"- {{at: 0, alpha: 0.5}}\n- {{at: 1, {row.keys[0]}: {value}}}\n"
        with pytest.raises(MusicsteerError) as info:
            parse_automation(text, source="a.yaml")
        assert str(info.value).startswith("a.yaml line 2: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(("event", "words"), [
    ("{at: 1.0e308, alpha: 0.5}", "at must be at least 0 and at most 86400"),
    ("{at: .inf, alpha: 0.5}", "at must be finite"),
    ("{at: 1, alpha: 0.5, ramp: 1.0e308}", "ramp must be at least 0 and at most 3600"),
    ("{at: 1, alpha: 0.5, ramp: .nan}", "ramp must be finite"),
    ("{at: 1, morph: jazz, seconds: -1}", "seconds must be at least 0"),
])
def test_automation_times_and_glides_are_bounded(event: str, words: str) -> None:
    with pytest.raises(MusicsteerError, match=words):
        parse_automation(f"- {event}\n")
    assert AT.high * 50 < 2**31 and GLIDE.high * 50 < 2**31


def test_automation_past_the_end_of_a_render_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "late.yaml"
    path.write_text("- {at: 0.5, alpha: 0.2}\n- {at: 3.0, alpha: 0.9}\n")
    code, err = exit_code(["render", "--model", "tiny", "--device", "cpu", "--seconds", "2", "--automation",
                           str(path), "--out", str(tmp_path / "x.wav")], capsys)
    assert code == 2 and f"{path} line 2: at 3 s is past the end of the render (2 s)" in err
    assert err.count("\n") == 1 and not (tmp_path / "x.wav").exists()


def test_a_yaml_alias_bomb_is_refused_in_one_line_without_expanding(tmp_path, capsys) -> None:
    """The issue's shape: a few hundred bytes of nested aliases under `defaults: seed:`."""
    doc = "defaults:\n  seed: " + _laughs() + "\n"
    assert len(doc) < 600
    path = tmp_path / "bomb.yaml"
    path.write_text(doc)
    code, err = exit_code(["play", "--config", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "expands to more than" in err, err


def _laughs() -> str:
    """Nine nested levels of nine aliases each: 9^9 values from a few hundred bytes."""
    inner = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    levels = [f"&l0 {inner}"]
    for i in range(1, 9):
        levels.append(f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "[" + ", ".join(levels) + "]"


def test_replayed_logs_hold_every_value_to_the_start_up_rules(tmp_path, capsys) -> None:
    header = {"format": "musicsteer.session/1", "model": "tiny", "controls": {}, "settings": {}, "prompt_frames": 0,
              "engine_version": __version__}
    for row in LIVE.values():
        for raw in ('NaN', 'Infinity', '-Infinity', '1e400', '1e308', '"x"', '[[]]', '{"a": {"b": 1}}', 'null'):
            path = tmp_path / "bad.jsonl"
            path.write_text(json.dumps(header) + "\n"
                            + f'{{"step": 3, "sample": 0, "param": "{row.name}", "value": {raw}, "seconds": 0}}\n'
                            + '{"end": {"steps": 10, "frames": 5, "padded": false}}\n')
            try:
                read_log(path)
            except MusicsteerError as err:
                assert str(err).startswith(f"{path} line 2: ") and "\n" not in str(err)
                continue
            assert row.kind in ("text", "choice", "mix") and raw == '"x"', (row.name, raw)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(header) + "\n" + '{"step": 3, "sample": 0, "param": "alpha", "value": 1e400}\n')
    code, err = exit_code(["render", "--replay", str(path), "--out", str(tmp_path / "x.wav")], capsys)
    assert code == 2 and err.count("\n") == 1 and "line 2: alpha must be finite" in err
    for line in ('{"step": -1, "sample": 0, "param": "alpha", "value": 0.5}',
                 '{"step": 1e308, "sample": 0, "param": "alpha", "value": 0.5}',
                 '{"end": {"frames": 1e400}}', '[1, 2]',
                 '{"step": 3, "param": "alpha", "value": 0.5, "seconds": 1e308}'):
        path.write_text(json.dumps(header) + "\n" + line + "\n" + '{"end": {"frames": 1}}\n')
        with pytest.raises(MusicsteerError, match=r"line 2: "):
            read_log(path)
    for bad_header in ({**header, "settings": {"window_seconds": 1e308}}, {**header, "controls": {"alpha": math.inf}}):
        path.write_text(json.dumps(bad_header) + "\n" + '{"end": {"steps": 10, "frames": 5, "padded": false}}\n')
        code, err = exit_code(["render", "--replay", str(path), "--model", "tiny", "--device", "cpu",
                               "--out", str(tmp_path / "x.wav")], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


# -- live: OSC into a running, recording session ---------------------------------------------------------------

class Recording:
    def __init__(self, tiny, tmp_path) -> None:
        vectors = random_vectors(tiny, best_layer=1)
        gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2), vectors)
        self.wav = tmp_path / "take.wav"
        self.session = StreamingSession(gen, StreamOptions(output_device="null", record=self.wav))
        self.server = OscServer(self.session, port=0, status_interval=0.2)
        self.runner = threading.Thread(target=self.session.run, daemon=True)

    def __enter__(self) -> Recording:
        self.runner.start()
        self.server.start()
        until(lambda: self.session.step > 10, what="generation")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.session.stop()
        self.runner.join(timeout=30)
        assert self.session.error is None

    def recorded(self) -> int:
        until(lambda: self.wav.exists() and sf.info(str(self.wav)).frames > 0, what="a recording")
        return sf.info(str(self.wav)).frames


def osc(address: str, *typed: tuple[str, object]) -> bytes:
    builder = OscMessageBuilder(address)
    for tag, value in typed:
        builder.add_arg(value, tag)
    return builder.build().dgram


def bundle(*elements: bytes) -> bytes:
    return b"#bundle\0" + bytes(7) + b"\1" + b"".join(len(e).to_bytes(4, "big") + e for e in elements)


def hostile_messages(row: Param, address: str) -> list[bytes]:
    """Messages on a parameter's address that the session must refuse or clamp (never apply as sent)."""
    numbers = [("d", math.nan), ("d", math.inf), ("d", -math.inf), ("d", 1e308), ("d", -1e308), ("h", -(2**62)),
               ("f", float(row.high) * 10 + 1)]
    numbers += [] if row.name == "seed" else [("h", 2**62)]  # (a valid seed)
    wrong = [("s", "0.5"), ("r", 0xFF0000FF), ("m", (0, 0x90, 60, 100)), ("T", True), ("b", b"\0" * 8)]
    name, address = address, f"/musicsteer/{address}"
    if name == "alpha":
        return [osc(address, n) for n in numbers] + [osc(address, w) for w in wrong] + [
            osc(address, ("f", 0.5), ("d", 1e308)), osc(address, ("f", 0.5), ("d", math.nan)),
            osc(address, ("f", 0.5), ("f", -1.0)), osc(address), osc(address, ("f", 1), ("f", 2), ("f", 3))]
    if row.kind in ("number", "whole"):
        return [osc(address, n) for n in numbers] + [osc(address, w) for w in wrong] + [osc(address)]
    if name in ("mix", "morph"):
        return [osc(address, ("s", "jazz"), n, *([("f", 1.0)] if name == "morph" else [])) for n in numbers] + [
            osc(address, ("s", "jazz"), ("f", 1.0), ("d", 1e308)), osc(address, ("s", "jazz"), ("r", 1), ("f", 1.0)),
            osc(address, *[x for i in range(40) for x in (("s", f"v{i}"), ("f", 1.0))]),
            osc(address, ("s", "polka"), ("f", 1.0), ("f", 1.0)), osc(address, ("f", 1.0), ("f", 1.0))]
    long = "x" * 5000
    return [osc(address, ("s", long)), osc(address, ("s", "bell\x07")), osc(address, ("f", 1.0)),
            osc(address, ("s", "a"), ("s", "b")), osc(address, *wrong[1:2]), osc(address)]


def test_every_live_parameter_survives_every_hostile_osc_message(tiny, tmp_path) -> None:
    with Recording(tiny, tmp_path) as live:
        client = Client(live.server.address)
        control = live.session.control
        frames_before, counts_before = live.recorded(), control.counts
        sent = 0
        for row in LIVE.values():
            for address in row.osc:
                for message in hostile_messages(row, address):
                    client.sock.sendto(message, client.target)
                    sent += 1
        # each bare message is answered once: an error (refused) or a clamp (applied, in range)
        until(lambda: len(client.replies("/musicsteer/error")) + len(client.replies("/musicsteer/clamped")) >= sent,
              timeout=20, what=f"{sent} replies")
        errors, clamps = client.replies("/musicsteer/error"), client.replies("/musicsteer/clamped")
        assert len(errors) + len(clamps) == sent
        assert not any("malformed" in e[0] or "unknown address" in e[0] for e in errors), errors  # judged, each
        assert all(len(e) == 1 and "\n" not in e[0] and len(e[0]) <= 300 for e in errors)
        for param, applied, _ in clamps:
            row = LIVE.get(param, GLIDE)  # ramp, seconds: a glide time was clamped
            assert param in ("alpha", "mix") or row.low <= applied <= row.high
        counts = control.counts
        refused = sum(counts.values()) - counts.get("clamped", 0)
        refused_before = sum(counts_before.values()) - counts_before.get("clamped", 0)
        assert refused - refused_before == len(errors)
        assert counts.get("clamped", 0) - counts_before.get("clamped", 0) == len(clamps)

        # the same messages as bundle elements: one reply per bundle, every element judged
        elements = [m for row in LIVE.values() for address in row.osc for m in hostile_messages(row, address)]
        chunks = [elements[i : i + 20] for i in range(0, len(elements), 20)]
        before = len(client.replies("/musicsteer/error"))
        for chunk in chunks:
            client.sock.sendto(bundle(*chunk), client.target)
        until(lambda: len(client.replies("/musicsteer/error")) - before >= len(chunks), what="bundle replies")
        summaries = client.replies("/musicsteer/error")[before:]
        assert all("messages refused; first: " in s[0] for s in summaries), summaries

        # still playing, still recording, and the next valid change applies
        step = live.session.step
        until(lambda: live.session.step > step + 25, what="generation to go on")
        until(lambda: live.recorded() > frames_before + 16000, what="the recording to grow")
        client.send("/musicsteer/alpha", 0.33)
        client.send("/musicsteer/steer", "jazz")
        steering = live.session.gen.steering  # (the storm moved the layer: clamped to 0 — read where it is now)
        until(lambda: control.values.mix == {"jazz": 1.0} and control.values.alpha == pytest.approx(0.33)
              and abs(float(steering.alpha[control.values.site][control.values.layers[0]]) - 0.33) < 1e-6,
              what="a valid change after the storm")
        client.send("/musicsteer/status")
        status = client.wait("/musicsteer/status")[-1]
        assert "refused" in status and "clamped" in status and "refused.non_finite" in status
        client.close()
    assert live.session.error is None and live.session.gen.listeners.errors == 0


def test_the_issue_examples_live(tiny, tmp_path, capfd) -> None:
    with Recording(tiny, tmp_path) as live:
        client = Client(live.server.address)
        # a finite alpha whose ramp is not: clamped to the longest glide, reported, the take goes on
        client.sock.sendto(osc("/musicsteer/alpha", ("f", 0.5), ("d", 1e308)), client.target)
        assert client.wait("/musicsteer/clamped")[0] == ["ramp", 3600.0, 1e308]
        step = live.session.step
        until(lambda: live.session.step > step + 50, what="the session to outlive a 1e308 s ramp")
        # an RGBA colour is not a strength
        client.sock.sendto(osc("/musicsteer/alpha", ("r", 0xFF0000FF)), client.target)
        refusal = client.wait("/musicsteer/error")[-1][0]
        assert "alpha needs a number (and optionally ramp seconds), got OSC types 'r'" in refusal
        # a string whose padding holds other bytes than NUL
        padded = bytearray(osc("/musicsteer/site", ("s", "attention")))
        padded[-1] = ord("X")
        client.sock.sendto(bytes(padded), client.target)
        assert "padding" in client.wait("/musicsteer/error", 2)[-1][0]
        assert live.session.control.values.site == "residual"
        # a bundle whose element size runs past the packet is refused whole, like a bare message
        good = osc("/musicsteer/alpha", ("f", 0.9))
        cut = b"#bundle\0" + bytes(8) + len(good).to_bytes(4, "big") + good + (999).to_bytes(4, "big") + good
        client.sock.sendto(cut, client.target)
        assert "does not fit the packet" in client.wait("/musicsteer/error", 3)[-1][0]
        assert not any(c.value == pytest.approx(0.9) for _, c in live.server.arrivals)
        # 50 crafted 60 KB packets: one reply each, nothing on stderr, OSC answers at once after
        capfd.readouterr()
        junk = b"#bundle\0" + bytes(8) + b"".join(
            (12).to_bytes(4, "big") + b"/x\0\0,c\0\0" + struct.pack(">i", 65) for _ in range(3700))
        assert len(junk) > 59_000
        errors_before = len(client.replies("/musicsteer/error"))
        for _ in range(50):
            client.sock.sendto(junk, client.target)
        until(lambda: len(client.replies("/musicsteer/error")) - errors_before >= 50, what="50 replies")
        client.send("/musicsteer/ping", 7)
        assert client.wait("/musicsteer/pong", timeout=2.0)[-1] == [7]
        captured = capfd.readouterr()
        assert captured.err == "" and captured.out == ""
        assert live.session.control.counts.get("malformed", 0) >= 51
        client.close()


# -- MIDI: the ends of a knob are bounded at load; what a knob sends live lands in range ----------------------------

@pytest.mark.parametrize("param", KNOB_PARAMS)
def test_midi_knob_ends_are_bounded_and_every_cc_lands_in_range(param: str, tiny) -> None:
    from musicsteer.controllers.mappings import EXTRA_RANGES, KnobMapping

    for bad in (".nan", ".inf", "1.0e+308", "-1.0e+308", "abc", "[1]"):
        pair = ", from: a, to: b" if param == "crossfade" else ""
        text = f"midi:\n  mappings:\n    - {{cc: 1, param: {param}, min: {bad}, max: 1{pair}}}\n"
        with pytest.raises(MusicsteerError, match=r"^c\.yaml line 3: min of "):
            parse_config(text, source="c.yaml")
    if param in EXTRA_RANGES:
        return  # crossfade and morph_seconds: checked live by test_midi (mixes, the mapper's own time)
    vectors = random_vectors(tiny)
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}), vectors)
    row = LIVE[param]
    high = tiny.num_layers - 1 if param == "layer" else row.high  # the model's own bound for layers
    low = -0.99 if param == "alpha" else row.low  # the renorm rule needs alpha > -1 (refused live below)
    mapping = KnobMapping(1, None, param, low, high, takeover="jump")
    midi = MidiInput(gen.control, "unused", MidiMapper([mapping], None, values_reader(gen.control)))
    for value in range(128):
        midi.on_message(mido.Message("control_change", control=1, value=value))
        gen.control.apply_due(value)
        field = getattr(gen.control.values, row.status)
        for v in field if isinstance(field, tuple) else (field,):
            assert row.low <= v <= high, (param, value, v)
    assert midi.errors == 0 and set(gen.control.counts) <= {"clamped"}


# -- what an adversarial review found (each was a crash, a stall or a silent loss) ---------------------------------

def test_osc_address_patterns_are_refused_at_once_and_duplicate_layers_never_reach_the_engine(tiny, tmp_path) -> None:
    with Recording(tiny, tmp_path) as live:
        client = Client(live.server.address)
        # python-osc compiled these into backtracking regexes: seconds of GIL each, or forever
        for address in ("/musicsteer/" + "*" * 21 + "Q", "/" + "*" * 1000, "/musicsteer/{alpha,mix}"):
            client.sock.sendto(osc(address, ("f", 0.5)), client.target)
        errors = client.wait("/musicsteer/error", 3, timeout=3.0)
        assert all("address patterns" in e[0] for e in errors[-3:])
        # a layer listed twice was a fatal error on the generation thread
        client.sock.sendto(osc("/musicsteer/layer", ("i", 1), ("i", 1)), client.target)
        assert "lists a value twice" in client.wait("/musicsteer/error", 4)[-1][0]
        # the model's layer count is the live range: far past it is clamped to the last layer, not refused
        client.sock.sendto(osc("/musicsteer/layer", ("h", 2**63 - 1)), client.target)
        assert client.wait("/musicsteer/clamped")[-1][:2] == ["layer", tiny.num_layers - 1]
        # under renorm an alpha at or below -1 is refused, quoting what was sent
        client.sock.sendto(osc("/musicsteer/alpha", ("d", -1e308)), client.target)
        assert "alpha -1e+308 needs to be above -1" in client.wait("/musicsteer/error", 5)[-1][0]
        step = live.session.step
        until(lambda: live.session.step > step + 25, what="generation to go on")
        client.close()
    with pytest.raises(MusicsteerError, match="a.yaml line 1: layer lists a value twice"):
        parse_automation("- {at: 1, layer: [1, 1]}\n", source="a.yaml")


def test_an_osc_flood_is_cut_at_the_rate_limit_without_replies(tiny, tmp_path) -> None:
    """Past RATE messages a second, datagrams are dropped unread and counted `busy`, with no reply: however
    fast this machine, the server never handles more than the bucket allows."""
    from musicsteer.controllers.osc import RATE

    with Recording(tiny, tmp_path) as live:
        client = Client(live.server.address)
        message = osc("/musicsteer/guidance", ("f", 3.0))
        before, began = live.server.counters, time.monotonic()
        for _ in range(3 * RATE):
            client.sock.sendto(message, client.target)
        settled = [-1]

        def quiet() -> bool:  # nothing more arriving
            now, settled[0] = settled[0], live.server.counters["received"]
            time.sleep(0.2)
            return now == settled[0]

        until(quiet, what="the flood to end")
        after, elapsed = live.server.counters, time.monotonic() - began
        handled, busy = after["messages"] - before["messages"], after["busy"] - before["busy"]
        assert handled + busy == after["received"] - before["received"]
        assert handled <= RATE * (elapsed + 1) + 1
        assert live.session.control.counts.get("busy", 0) == busy
        assert client.replies("/musicsteer/error") == []
        time.sleep(1.0)  # the bucket refills
        client.send("/musicsteer/ping", 3)
        assert client.wait("/musicsteer/pong", timeout=2.0)[-1] == [3]
        client.close()


@pytest.mark.parametrize(("edit", "words"), [
    ('{"step": 3, "sample": 0, "param": "seed", "value": 1' + "0" * 5000 + "}", "not JSON"),
    ("[" * 100_000, "not JSON"),
    ('{"step": 9, "sample": 0, "param": "alpha", "value": 0.5}\n{"step": 3, "param": "alpha", "value": 0.5}',
     "in step order"),
])
def test_hand_edited_logs_are_one_line(edit: str, words: str, tmp_path) -> None:
    header = {"format": "musicsteer.session/1", "model": "tiny", "controls": {}, "settings": {},
              "engine_version": __version__}
    path = tmp_path / "edited.jsonl"
    path.write_text(json.dumps(header) + "\n" + edit + "\n" + '{"end": {"steps": 10, "frames": 5}}\n')
    with pytest.raises(MusicsteerError, match=words):
        read_log(path)


@pytest.mark.parametrize(("edit", "words"), [
    ('{"step": 10, "sample": 1, "param": "alpha", "value": 0.5}', "line 2: a change's sample must be its step × 640"),
    ('{"step": 10, "sample": 6400, "param": "alpha", "value": 0.5}\n{"end": {"steps": 10, "frames": 5}}',
     "line 4: a log has one end record"),
])
def test_a_log_whose_records_contradict_each_other_is_one_line(edit: str, words: str, tmp_path) -> None:
    """Found by a hostile review: a change whose sample is not its step's frame, and a log with a second end
    record, were read silently (which one a replay should believe is not the log's to leave open)."""
    header = {"format": "musicsteer.session/3", "model": "tiny", "controls": {}, "settings": {},
              "engine_version": __version__, "sample_rate": 32000, "frame_rate": 50}
    path = tmp_path / "edited.jsonl"
    path.write_text(json.dumps(header) + "\n" + edit + "\n" + '{"end": {"steps": 10, "frames": 5}}\n')
    with pytest.raises(MusicsteerError, match=words):
        read_log(path)


@pytest.mark.parametrize(("header", "words"), [
    ({"controls": {"mix": {"rock": "x"}}}, "line 1: "),
    ({"controls": {"volume": 1}}, "unknown control"),
    ({"prompt_frames": 8_000_000}, "prompt_frames needs the init_audio"),
    ({"init_audio": {"path": "/nowhere/x.wav", "sha256": "0" * 64}}, "the session's init audio not found"),
    ({"settings": {"window_seconds": "x"}}, "window_seconds needs a number"),
    ({"sample_rate": 10**30}, "sample_rate must be a whole number from 8000 to 192000"),
    ({"frame_rate": 0}, "frame_rate must be a whole number from 1 to 1000"),
    ({"sample_rate": 48000, "frame_rate": 50}, "was made at sample_rate 48000; model tiny has 32000"),
    ({"seed": 10**40, "controls": {"seed": 1}}, "seed must equal controls' seed"),
])
def test_hand_edited_headers_are_one_line_at_replay(header: dict, words: str, tmp_path, capsys) -> None:
    path = tmp_path / "edited.jsonl"
    base = {"format": "musicsteer.session/1", "model": "tiny", "controls": {}, "settings": {},
            "engine_version": __version__}
    path.write_text(json.dumps({**base, **header}) + "\n" + '{"end": {"steps": 10, "frames": 5}}\n')
    code, err = exit_code(["render", "--replay", str(path), "--device", "cpu", "--out", str(tmp_path / "x.wav")],
                          capsys)
    assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err


def test_hostile_text_in_errors_stays_on_one_line_and_escapes_controls(tmp_path, capsys) -> None:
    evil = str(tmp_path / "a\nb\x1b[2Jc.safetensors")
    code, err = exit_code(["render", "--model", "tiny", "--seconds", "1", "--vectors", evil, "--steer", "x",
                           "--out", str(tmp_path / "x.wav")], capsys)
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err and "\\x1b[2J" in err
    for text in ("!!int abc", "!!timestamp never", "!!bool maybe"):
        with pytest.raises(MusicsteerError, match="c.yaml line 2: a value cannot be read"):
            parse_config(f"defaults:\n  seed: {text}\n", source="c.yaml")


def test_a_flag_is_its_whole_name_in_every_command(tmp_path, capsys) -> None:
    """argparse would take a unique prefix (`--temp` for --temperature; bench's `--output report.json` became
    --output-device and the report went nowhere): every command, sub-command included, refuses one."""
    for argv, prefix in ((["render", "--seconds", "1", "--out", str(tmp_path / "x.wav"), "--temp", "0.5"], "--temp"),
                         (["play", "--output", "null"], "--output"),
                         (["probe", "extract", "--data", str(tmp_path), "--out", str(tmp_path / "a"), "--work", "2"],
                          "--work"),
                         (["eval", "--vec=v.safetensors"], "--vec")):
        code, err = exit_code(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and f"unrecognized arguments: {prefix}" in err, (argv, err)


def test_outputs_are_checked_before_the_work(tmp_path, capsys) -> None:
    nowhere = str(tmp_path / "nowhere" / "x.npy")
    for argv in (["render", "--seconds", "1", "--out", str(tmp_path / "x.wav"), "--codes-out", nowhere],
                 ["play", "--output-device", "null", "--codes-out", nowhere],
                 ["bench", "--json", str(tmp_path / "nowhere" / "b.json")]):
        code, err = exit_code([*argv, "--model", "tiny", "--device", "cpu"], capsys)
        assert code == 2 and err.count("\n") == 1 and "does not exist" in err, (argv, err)
    # a fixed buffer starts at its prebuffer, which must hold a block (auto starts at its lead: two blocks)
    code, err = exit_code(["play", "--buffer", "1", "--prebuffer", "0.02", "--blocksize", "4096"], capsys)
    assert code == 2 and "must hold at least one audio block" in err
    code, err = exit_code(["play", "--buffer", "1", "--prebuffer", "1.5"], capsys)
    assert code == 2 and "the prebuffer (1.5 s) cannot be longer than the buffer (1 s)" in err


def test_a_single_layer_flag_and_a_single_config_layer_work(tmp_path, vectors_file) -> None:
    out = tmp_path / "one.npy"
    assert main(["render", "--model", "tiny", "--device", "cpu", "--seconds", "0.5", "--vectors", vectors_file,
                 "--steer", "rock", "--layer", "1", "--out", str(tmp_path / "one.wav"), "--codes-out", str(out)]) == 0
    assert parse_config("defaults:\n  layer: 1\n").defaults["layer"] == (1,)


# -- what the second adversarial review found --------------------------------------------------------------------

def test_names_the_file_system_refuses_are_one_line(tmp_path, capsys, vectors_file) -> None:
    long = "y" * 300
    render = ["render", "--model", "tiny", "--device", "cpu", "--seconds", "1"]
    for argv in ([*render, "--out", str(tmp_path / f"{long}.wav")],
                 [*render, "--out", str(tmp_path / "x.wav"), "--codes-out", str(tmp_path / f"{long}.npy")],
                 [*render, "--out", str(tmp_path / "x.wav"), "--vectors", long, "--steer", "rock"],
                 [*render, "--out", str(tmp_path / "x.wav"), "--automation", long],
                 [*render, "--out", str(tmp_path / "x.wav"), "--init-audio", long],
                 ["render", "--model", long, "--seconds", "1", "--out", str(tmp_path / "x.wav")],
                 ["play", "--model", "tiny", "--config", long],
                 [*render, "--out", str(tmp_path)],  # a folder
                 [*render, "--out", f"{vectors_file}/x.wav"]):  # under a file
        code, err = exit_code(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv[-2:], err)
    assert not list(tmp_path.glob("*.wav"))  # all refused before any work


def _log(tmp_path, header: dict, *lines: str) -> str:
    base = {"format": "musicsteer.session/1", "model": "tiny", "controls": {}, "settings": {},
            "engine_version": __version__}
    path = tmp_path / "edited.jsonl"
    path.write_text("\n".join([json.dumps({**base, **header}), *lines]) + "\n")
    return str(path)


@pytest.mark.parametrize(("end", "extra", "words"), [
    ('{"end": {"frames": 50}}', [], "past the 53 steps of this replay"),
    ("", ["--seconds", "1"], "than --seconds covers"),
    ('{"end": {"frames": 50, "steps": 55}}', [], "than its end record says"),
])
def test_replayed_changes_past_the_end_are_refused(end: str, extra: list[str], words: str, tmp_path, capsys) -> None:
    path = _log(tmp_path, {}, '{"step": 60, "sample": 0, "param": "guidance", "value": 4.0}', *([end] if end else []))
    code, err = exit_code(["render", "--replay", path, "--device", "cpu", *extra, "--out", str(tmp_path / "x.wav")],
                          capsys)
    assert code == 2 and err.count("\n") == 1 and words in err, err


def test_replayed_headers_take_one_layer_as_a_list_and_refuse_what_is_not_theirs(tmp_path, capsys) -> None:
    assert read_log(_log(tmp_path, {"controls": {"layers": 1}}, '{"end": {"frames": 5}}')).header["controls"][
        "layers"] == (1,)
    assert read_log(_log(tmp_path, {"controls": {"layers": [0]}}, '{"end": {"frames": 5}}')).header["controls"][
        "layers"] == (0,)
    with pytest.raises(MusicsteerError, match="padded must be true or false"):
        read_log(_log(tmp_path, {}, '{"end": {"frames": 5, "padded": "no"}}'))
    path = _log(tmp_path, {"init_audio": {"path": str(tmp_path / "gone.wav"), "sha256": "0" * 64, "seconds": 10}},
                '{"end": {"frames": 5}}')
    code, err = exit_code(["render", "--replay", path, "--device", "cpu", "--out", str(tmp_path / "x.wav")], capsys)
    assert code == 2 and err.startswith(f"musicsteer: error: {path}: the session's init audio not found")


def test_presets_are_checked_against_the_model_and_rule_at_start(tmp_path, capsys, vectors_file) -> None:
    for preset, words in (("{mix: rock, alpha: 0.5, layer: [5]}", "layer 5 out of range"),
                          ("{mix: rock, alpha: -5}", "alpha -5.0 needs to be above -1")):
        config = tmp_path / "c.yaml"
        config.write_text(f"presets:\n  p: {preset}\n")
        code, err = exit_code(["play", "--model", "tiny", "--device", "cpu", "--output-device", "null", "--seconds",
                               "1", "--vectors", vectors_file, "--config", str(config), "--no-osc"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"{config} line 2: preset 'p': " in err and words in err, err


def test_smaller_inconsistencies_are_gone(tmp_path, capsys) -> None:
    code, err = exit_code(["render", "--steer", "rock=1,rock=2", "--out", str(tmp_path / "x.wav")], capsys)
    assert code == 2 and "a mix names rock twice" in err
    for text, words in (("presets:\n  \"a\\eb\": {mix: rock, alpha: 0.5}\n", "control character"),
                        ('osc: {host: "127.0.0.1\\n"}\n', "'host' needs an address")):
        with pytest.raises(MusicsteerError, match=words):
            parse_config(text, source="c.yaml")
    merged = parse_config("presets:\n  base: &p {mix: rock, alpha: 0.5, seconds: 2}\n  b: {<<: *p, alpha: 0.7}\n")
    assert (merged.presets["b"].alpha, merged.presets["b"].seconds) == (0.7, 2.0)  # a merge, overridden


def test_osc_reports_a_clamped_glide_and_every_layer(tiny, tmp_path) -> None:
    with Recording(tiny, tmp_path) as live:
        client = Client(live.server.address)
        client.sock.sendto(osc("/musicsteer/alpha", ("f", 0.5), ("d", 1e308)), client.target)
        assert client.wait("/musicsteer/clamped")[-1] == ["ramp", 3600.0, 1e308]
        client.sock.sendto(osc("/musicsteer/mix", ("s", "rock"), ("f", 0.5), ("s", "rock"), ("f", 0.5)), client.target)
        assert "names a vector twice" in client.wait("/musicsteer/error")[-1][0]
        client.send("/musicsteer/layer", 0, 1)
        until(lambda: live.session.control.values.layers == (0, 1), what="two layers")
        client.send("/musicsteer/status")
        status = client.wait("/musicsteer/status")[-1]
        assert status[status.index("layers") + 1] == "0,1"
        client.close()


def test_start_up_values_only_the_model_or_a_neighbour_can_judge_are_one_line(tmp_path, capsys, vectors_file) -> None:
    """From a hostile review: a config's `buffer: auto` is taken (it was a TypeError); a MIDI knob whose
    end the rule refuses (alpha -5 under renorm) or the model lacks (layer 900) is refused at start, not
    live at two thirds of its travel; host names the socket layer cannot encode are one line."""
    auto = tmp_path / "auto.yaml"
    auto.write_text("defaults:\n  buffer: auto\n")
    code, err = exit_code(["play", "--model", "tiny", "--output-device", "null", "--no-osc", "--seconds", "0.5",
                           "--config", str(auto), "--no-status"], capsys)
    assert code == 0 and "Traceback" not in err, err
    for knob, words in (("{cc: 1, param: alpha, min: -5, max: 1}", "the alpha knob on CC 1 reaches -5: alpha -5"),
                        ("{cc: 2, param: layer, min: 0, max: 900}",
                         "the layer knob on CC 2 reaches 900: layer 900 out")):
        config = tmp_path / "knob.yaml"
        config.write_text(f"midi:\n  output: nowhere\n  mappings:\n    - {knob}\n")
        code, err = exit_code(["play", "--model", "tiny", "--output-device", "null", "--no-osc", "--vectors",
                               vectors_file, "--config", str(config)], capsys)
        assert code == 2 and err.count("\n") == 1 and f"knob.yaml line 4: {words}" in err, err
    for host in ("a..b", "x" * 100_000, "a\x00b"):
        for flags in (["--osc-host", host, "--osc-port", "0"], ["--no-osc", "--web", f"{host}:0"]):
            code, err = exit_code(["play", "--model", "tiny", "--output-device", "null", *flags], capsys)
            assert code == 2 and err.count("\n") == 1 and len(err) < 400, (flags[:2], err[:200])


def test_replayed_logs_are_bounded_in_size_and_in_changes_per_token(tmp_path, monkeypatch) -> None:
    """A log is read whole: past MAX_LOG_BYTES it is refused before reading (2,000,000 changes took 2.6 GB
    and 83 s); more changes at one token than a live session can apply (the inbox: 4096) are refused."""
    from musicsteer.engine import session_log

    header = {"format": "musicsteer.session/2", "model": "tiny", "controls": {}, "settings": {},
              "take": {"start_step": 0, "start_sample": 0}}
    path = tmp_path / "flood.jsonl"
    change = json.dumps({"step": 10, "sample": 6400, "param": "alpha", "value": 0.5})
    path.write_text(json.dumps(header) + "\n" + (change + "\n") * 4097)
    with pytest.raises(MusicsteerError, match="more than 4096 changes at step 10"):
        read_log(path)
    monkeypatch.setattr(session_log, "MAX_LOG_BYTES", 1000)  # (the real bound is 256 MiB: not written here)
    with pytest.raises(MusicsteerError, match=r"the most replay reads is 1,000"):
        read_log(path)


def played_warnings(capsys, config, *extra: str) -> list[str]:
    """The warning lines of a short `play --no-osc --config CONFIG` on the null device (it must exit 0)."""
    capsys.readouterr()
    assert main(["play", "--model", "tiny", "--device", "cpu", "--output-device", "null", "--no-osc", "--no-status",
                 "--seconds", "0.3", "--config", str(config), *extra]) == 0
    return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_config_defaults_nothing_would_read_are_told_once(tmp_path, capsys, vectors_file) -> None:
    """A config serves many sessions, so its steering defaults without --vectors are a warning, not a refusal;
    with --vectors its `steer:` is the mix the other steering values act on, even with no live surface."""
    config = tmp_path / "c.yaml"
    config.write_text("defaults:\n  steer: rock\n  alpha: 0.7\n  site: attention\n  seed: 4\n")
    assert played_warnings(capsys, config) == [
        "musicsteer: warning: the config's defaults do nothing in this session: mix, alpha, site need --vectors FILE "
        "(nothing steers without one)"]  # and are dropped: `steer` was then refused
    # a flag is judged by what the config has left: its dropped mix no longer lets --alpha through
    code, err = exit_code(["play", "--model", "tiny", "--device", "cpu", "--no-osc", "--config", str(config),
                           "--alpha", "0.4"], capsys)
    assert code == 2 and err.splitlines()[-1] == "musicsteer: error: --alpha needs --vectors FILE (nothing steers "\
        "without one)", err
    assert played_warnings(capsys, config, "--vectors", vectors_file, "--layer", "1") == []


def test_a_zero_is_a_value_given() -> None:
    """`--ease-at 0` (cosine 0 is a threshold) makes --meter-every act: refuse_idle tests presence, not truth."""
    from argparse import Namespace

    from musicsteer.commands.options import refuse_idle

    assert refuse_idle(Namespace(ease_at=0.0, meter_every=10, vectors="v.safetensors")) == {}
    with pytest.raises(MusicsteerError, match="--slew needs --vectors FILE"):
        refuse_idle(Namespace(slew=0.0))


def test_no_osc_says_the_configs_osc_section_is_not_used(tmp_path, capsys) -> None:
    config = tmp_path / "osc.yaml"
    config.write_text("osc:\n  port: 9123\n")
    warning = f"musicsteer: warning: --no-osc: the osc: section of {config} is not used"
    assert played_warnings(capsys, config) == [warning]
