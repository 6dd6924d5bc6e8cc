"""Session log and exact replay: a live session with alpha changes, a morph and a prompt change,
regenerated offline by `render --replay`, gives identical codes."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import random_vectors

from musicsteer import __version__
from musicsteer.cli import main
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Change
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log


def live_session(tiny, tmp_path, seconds: float | None, vectors_path: str, slew: float = 0.05):
    from musicsteer.engine.vectors import SteeringVectors

    vectors = SteeringVectors.load(vectors_path)
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2, seed=11), vectors,
                    window_seconds=2.0, keep_seconds=0.5, slew=slew)  # slides twice in 5 s
    session = StreamingSession(gen, StreamOptions(seconds=seconds, output_device="null",
                                                  record=tmp_path / "live.wav"), keep_codes=True)
    script = [(0.6, Change("alpha", 0.8)), (1.2, Change("mix", {"jazz": 1.0}, seconds=1.0)),
              (2.0, Change("prompt", "smooth jazz")), (2.6, Change("alpha", 0.1)), (3.1, Change("layer", 0))]

    def performer():  # changes arrive from another thread at arbitrary moments, as OSC would
        for at, change in script:
            while session.stats().played_seconds < at and not session._stop.is_set():
                threading.Event().wait(0.01)
            session.control.submit(change)
        if seconds is None:
            while session.stats().played_seconds < 4.0:
                threading.Event().wait(0.01)
            session.stop()

    threading.Thread(target=performer, daemon=True).start()
    session.run()
    return session


@pytest.mark.parametrize("seconds", [5.0, None], ids=["bounded", "stopped"])
def test_replay_regenerates_identical_codes(tiny, tmp_path, vectors_file, seconds) -> None:
    session = live_session(tiny, tmp_path, seconds, vectors_file)
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    log = read_log(tmp_path / "live.jsonl")
    assert [c.param for _, c in log.changes] == ["alpha", "mix", "prompt", "alpha", "layer"]
    # The take holds what was decoded: every frame of a bounded session; of a stopped one, those made
    # before the stop reached the decoder (generation runs ahead by the buffer).
    frames = log.end["frames"]
    assert frames == live.shape[-1] if seconds else live.shape[-1] - 30 < frames <= live.shape[-1]
    assert log.end["padded"] == (seconds is not None)
    live = live[:, :frames]
    for step, _ in log.changes:
        assert 0 < step <= log.end["steps"]
    first = json.loads((tmp_path / "live.jsonl").read_text().splitlines()[1])
    assert first["sample"] == first["step"] * 640

    out = tmp_path / "replayed.npy"
    assert main(["render", "--replay", str(tmp_path / "live.jsonl"), "--device", "cpu",
                 "--out", str(tmp_path / "replayed.wav"), "--codes-out", str(out)]) == 0
    assert np.array_equal(np.load(out), live)


def test_a_log_naming_the_slew_by_its_old_name_replays_with_it(tiny, tmp_path, vectors_file) -> None:
    """Logs before the slew had one name call it `alpha_slew_seconds` in their settings: read as `slew`, so
    such a log replays with its own slew (here 0: the α jump at 0.6 s landed in one token), not the
    default's glide."""
    session = live_session(tiny, tmp_path, 1.0, vectors_file, slew=0.0)
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    path = tmp_path / "live.jsonl"
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["settings"]["alpha_slew_seconds"] = header["settings"].pop("slew")
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    log = read_log(path)
    assert log.header["settings"]["slew"] == 0.0 and "alpha_slew_seconds" not in log.header["settings"]
    assert [c.param for _, c in log.changes] == ["alpha"]
    out = tmp_path / "replayed.npy"
    assert main(["render", "--replay", str(path), "--device", "cpu", "--out", str(tmp_path / "replayed.wav"),
                 "--codes-out", str(out)]) == 0
    assert np.array_equal(np.load(out), live[:, :log.end["frames"]])


def test_replay_refuses_a_different_vectors_file(tiny, tmp_path, vectors_file, capsys) -> None:
    live_session(tiny, tmp_path, 1.0, vectors_file)
    other = str(random_vectors(tiny, seed=99).save(tmp_path / "other.safetensors"))
    code = main(["render", "--replay", str(tmp_path / "live.jsonl"), "--vectors", other, "--device", "cpu",
                 "--out", str(tmp_path / "x.wav")])
    assert code == 2
    assert "not the one the session used (sha256 differs)" in capsys.readouterr().err


def test_replay_of_another_versions_log_warns_and_runs(tiny, tmp_path, vectors_file, capsys) -> None:
    """Seeded sampling changed between versions: a log from another version still replays (its
    changes at their steps), with a one-line warning that sampled codes may differ."""
    live_session(tiny, tmp_path, 1.0, vectors_file)
    log = tmp_path / "live.jsonl"
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    header["engine_version"] = "0.1.0"
    log.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    capsys.readouterr()
    assert main(["render", "--replay", str(log), "--device", "cpu", "--out", str(tmp_path / "old.wav")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "recorded by musicsteer 0.1.0" in warnings[0]
    assert (tmp_path / "old.wav").stat().st_size > 0
    # Another model's weights (a local folder changed since, another hub revision): said, not silent.
    header["engine_version"], header["model_fingerprint"] = __version__, "tiny:000000000000"
    log.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert main(["render", "--replay", str(log), "--device", "cpu", "--out", str(tmp_path / "other.wav")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "made with model tiny:000000000000" in warnings[0]
    assert warnings[0].endswith("the weights differ, so the codes will differ")


def test_replay_refuses_what_it_would_ignore_and_warns_of_another_dtype(tiny, tmp_path, vectors_file, capsys) -> None:
    """A plain session's log (no vectors, an end record): --vectors, --seconds and --meter would change
    nothing, so each is one line; another --dtype than the logged one replays with a warning."""
    session = StreamingSession(Generator(tiny, Controls(prompt="rock", seed=3)),
                               StreamOptions(seconds=0.5, output_device="null", record=tmp_path / "plain.wav"))
    session.run()
    log = str(tmp_path / "plain.jsonl")
    assert read_log(log).header["dtype"] == "float32"
    out = ["--device", "cpu", "--out", str(tmp_path / "again.wav")]
    for extra, message in ((["--vectors", vectors_file], "used no steering vectors: drop --vectors"),
                           (["--seconds", "5"], "has an end record (25 frames): drop --seconds"),
                           (["--meter"], "--meter cannot be given with --replay")):
        capsys.readouterr()
        assert main(["render", "--replay", log, *out, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["render", "--replay", log, *out, "--dtype", "bfloat16"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"musicsteer: warning: {log} was recorded in float32; this replay runs bfloat16, so the "
                        "codes may differ (give --dtype float32)"]
    # without --dtype a replay runs in the session's dtype, as on its model
    lines = (tmp_path / "plain.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["dtype"] = "bfloat16"
    (tmp_path / "plain.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert main(["render", "--replay", log, *out, "--dtype", "float32"]) == 0
    assert "was recorded in bfloat16; this replay runs float32" in capsys.readouterr().err
    assert main(["render", "--replay", log, *out]) == 0
    assert "warning" not in capsys.readouterr().err


def test_every_text_of_a_log_that_is_not_valid_unicode_is_one_line_and_exit_2(tiny, tmp_path, capsys) -> None:
    """A log is a start-up path: each of its texts (header fields, keys, a change's value, a notice, a
    meter label) is judged by params.check_text. A lone surrogate (JSON's \\ud800) anywhere, or a text
    too long, is one line and exit 2, never a traceback nor a replay that runs."""
    StreamingSession(Generator(tiny, Controls(prompt="rock", seed=3)),
                     StreamOptions(seconds=0.3, output_device="null", record=tmp_path / "plain.wav")).run()
    lines = (tmp_path / "plain.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    bad = "\ud800"
    headers = [{**header, key: bad} for key in ("engine_version", "model_fingerprint", "vectors_sha256", "created")]
    headers += [{**header, "engine_version": "x" * 5000}, {**header, bad: 1},
                {**header, "controls": {**header["controls"], "prompt": bad}, "prompt": bad},
                {**header, "settings": {**header["settings"], bad: 1}}]
    records = [{"step": 1, "sample": 640, "notice": "warning", "text": bad},
               {"step": 1, "sample": 640, "meter": {bad: 0.5}},
               {"step": 1, "sample": 640, "param": "prompt", "value": bad, "seconds": 0.0},
               {"step": 1, "sample": 640, "param": "alpha", "value": 0.1, "seconds": 0.0, bad: 0}]
    logs = [[json.dumps(h), *lines[1:]] for h in headers]
    logs += [[lines[0], json.dumps(record), *lines[1:]] for record in records]
    for number, body in enumerate(logs):
        log = tmp_path / f"bad-{number}.jsonl"
        log.write_text("\n".join(body) + "\n")
        capsys.readouterr()
        code = main(["render", "--replay", str(log), "--device", "cpu", "--out", str(tmp_path / "x.wav")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (number, err)
        assert "not valid Unicode" in err or "characters long" in err, err
