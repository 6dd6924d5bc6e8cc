"""A take started late in a long session: its log holds the last window slide's state and the changes
since, never the whole session; it replays exactly from there; the session keeps a window's worth of
changes, however many were made (issue 28, item 8)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import soundfile as sf
import torch

from musicsteer.cli import main
from musicsteer.engine import checkpoint
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Applied, Change
from musicsteer.engine.generator import Generator, render_codes
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log
from musicsteer.engine.vectors import SteeringVectors

HOP = 640


def test_every_slide_checkpoint_resumes_to_the_same_codes(tiny, vectors_file) -> None:
    """Deterministic, at the generator: changes at fixed steps (a mix morph and an alpha glide under way
    across a slide, a reseed, a prompt change); resuming a fresh generator from each slide's
    checkpoint with only the later changes gives the live codes from there on, draw for draw."""
    vectors = SteeringVectors.load(vectors_file)
    settings = {"window_seconds": 1.0, "keep_seconds": 0.3, "slew": 0.05}
    script = [(10, Change("alpha", 0.6)), (30, Change("mix", {"jazz": 1.0}, seconds=1.2)),
              (48, Change("alpha", -0.3, seconds=0.4)), (70, Change("seed", 9)), (95, Change("prompt", "calm")),
              (120, Change("top_k", 40)), (150, Change("alpha", 0.9))]

    def made(with_changes) -> Generator:
        gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2, seed=4), vectors, **settings)
        for step, change in with_changes:
            gen.control.submit(change, at_step=step)
        return gen

    live = made(script)
    points: list[checkpoint.Checkpoint] = []
    live.on_slide = points.append
    total = 200
    codes = render_codes(live, total, pad_end=False)
    assert len(points) >= 3 and any(p.glides for p in points)  # a glide was under way at a slide
    for point in points:
        gen = made([(s, c) for s, c in script if s > point.step])
        assert checkpoint.resume(gen, point)
        resumed = checkpoint.continue_from(gen, point, total, pad_end=False)
        assert torch.equal(resumed, codes[:, point.frame_offset:]), point.step


def _session(tiny, vectors_file, tmp_path, seconds: float) -> StreamingSession:
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2, seed=5),
                    SteeringVectors.load(vectors_file), window_seconds=1.5, keep_seconds=0.4)
    return StreamingSession(gen, StreamOptions(seconds=seconds, output_device="null", record=tmp_path / "first.wav",
                                               record_dir=tmp_path), keep_codes=True)


def test_a_take_started_after_many_changes_and_slides_logs_one_window_and_replays_exactly(
        tiny, vectors_file, tmp_path) -> None:
    """Alpha moved every 20 ms from another thread (as OSC would) through six window slides; a take
    started near the end replays to the live codes with `render --replay`, and its log begins with the
    checkpoint of the slide before it and only the changes since; the session held no more."""
    session = _session(tiny, vectors_file, tmp_path, seconds=9.0)
    applied: list[int] = []
    session.listeners.add(lambda e: applied.extend([e.step] * len(e.changes)) if isinstance(e, Applied) else None)
    kept: list[int] = []

    def performer() -> None:
        n = 0
        while not session._stop.is_set():
            n += 1
            session.control.submit(Change("alpha", 0.1 + 0.8 * ((n * 37) % 100) / 100))
            played = session.stats().played_seconds
            kept.append(len(session.applied))
            if played >= 7.0 and session.recordings.current.path.name == "first.wav":
                session.start_recording("late.wav", live=True)
            time.sleep(0.02)

    threading.Thread(target=performer, daemon=True).start()
    session.run()
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    late = read_log(tmp_path / "late.jsonl")
    header = json.loads((tmp_path / "late.jsonl").read_text().splitlines()[0])
    assert header["format"] == "musicsteer.session/3" and late.resume is not None
    assert late.resume.first_frame <= late.start_step  # the slide before the take's first frame
    slides = int(late.start_step // (1.5 * 50 - 0.4 * 50))
    assert slides >= 5 and len(applied) > 200
    # The log: only changes after the checkpoint's token, at most a window's (75 frames; 1.5 s at 50/s).
    assert all(step > late.resume.step for step, _ in late.changes)
    before = [step for step, _ in late.changes if step < late.start_step]
    assert len(late.changes) < len(applied) / 2 and late.start_step - late.resume.step <= 2 * 75
    assert len(before) == sum(late.resume.step < s < late.start_step for s in applied)
    # The session kept at most what one take could need: never more than a few windows of changes.
    assert max(kept) < 0.5 * len(applied)
    for log, name in ((late, "late"), (read_log(tmp_path / "first.jsonl"), "first")):
        codes, wav = tmp_path / f"{name}-r.npy", tmp_path / f"{name}-r.wav"
        assert main(["render", "--replay", str(tmp_path / f"{name}.jsonl"), "--device", "cpu", "--out", str(wav),
                     "--codes-out", str(codes)]) == 0
        assert np.array_equal(np.load(codes), live[:, log.start_step: log.start_step + log.end["frames"]]), name
        recorded, replayed = sf.read(tmp_path / f"{name}.wav", dtype="float32")[0], sf.read(wav, dtype="float32")[0]
        assert replayed.shape == recorded.shape
        if name == "late":  # its WAV against the replay's one-shot decode from the resumed window's first frame
            noise = max(float(np.sum((recorded - replayed) ** 2)), 1e-30)
            assert 10 * np.log10(np.sum(recorded ** 2) / noise) > 30


def test_a_resumed_log_refuses_state_that_does_not_fit(tiny, vectors_file, tmp_path, capsys) -> None:
    """A hand-edited resume state (codes of another window, a change before its checkpoint, a random
    state that is not base64) is one line and exit 2."""
    session = _session(tiny, vectors_file, tmp_path, seconds=3.0)

    def later() -> None:
        while session.stats().played_seconds < 2.0 and not session._stop.is_set():
            time.sleep(0.01)
        session.control.submit(Change("alpha", 0.5))
        session.start_recording("late.wav", live=True)
        time.sleep(0.3)
        session.control.submit(Change("alpha", 0.7))

    threading.Thread(target=later, daemon=True).start()
    session.run()
    lines = (tmp_path / "late.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert "resume" in header
    resume = header["resume"]
    bad = [{**resume, "codes": [row[:-1] for row in resume["codes"]]},
           {**resume, "rng": {**resume["rng"], "state": "not base64!"}},
           {**resume, "codes": [[70000] + row[1:] for row in resume["codes"]]},
           {**resume, "glides": {"top_k": {}}}]
    messages = ["do not fit this model", "not base64", "codes must be lists of codes", "glides name"]
    for number, (state, message) in enumerate(zip(bad, messages, strict=True)):
        log = tmp_path / f"bad-{number}.jsonl"
        log.write_text("\n".join([json.dumps({**header, "resume": state}), *lines[1:]]) + "\n")
        capsys.readouterr()
        assert main(["render", "--replay", str(log), "--device", "cpu", "--out", str(tmp_path / "x.wav")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    early = {"step": resume["session_step"] - 1 - header["take"]["start_step"], "sample": 0, "param": "alpha",
             "value": 0.3, "seconds": 0.0}
    early["sample"] = early["step"] * HOP
    log = tmp_path / "early.jsonl"
    log.write_text("\n".join([lines[0], json.dumps(early), *lines[1:]]) + "\n")
    assert main(["render", "--replay", str(log), "--device", "cpu", "--out", str(tmp_path / "x.wav")]) == 2
    assert "step must be a whole number from" in capsys.readouterr().err


def test_a_format_2_log_still_replays(tiny, tmp_path) -> None:
    """Logs written before checkpoints (format 2: every change before the take) replay as they did."""
    StreamingSession(Generator(tiny, Controls(prompt="rock", seed=3)),
                     StreamOptions(seconds=0.5, output_device="null", record=tmp_path / "t.wav")).run()
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "musicsteer.session/3" and "resume" not in header
    (tmp_path / "old.jsonl").write_text("\n".join([json.dumps({**header, "format": "musicsteer.session/2"}),
                                                   *lines[1:]]) + "\n")
    for name in ("t", "old"):
        assert main(["render", "--replay", str(tmp_path / f"{name}.jsonl"), "--device", "cpu",
                     "--out", str(tmp_path / f"{name}-r.wav"), "--codes-out", str(tmp_path / f"{name}.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "t.npy"), np.load(tmp_path / "old.npy"))
