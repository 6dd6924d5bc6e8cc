"""Takes never lose or misplace anything: a log per take with positions counted in it, exact replay of
any take (a second one, one with an audio prompt), confined and checked paths, prompts encoded off the
generation thread."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error, in_memory, random_vectors, tmpfs

from musicsteer.cli import main
from musicsteer.commands.render import prompt_codes_from
from musicsteer.controllers.osc import OscServer
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change, Notice
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log
from musicsteer.engine.takes import take_path

HOP = 640


def perform(session: StreamingSession, script: list[tuple[float, object]]) -> threading.Thread:
    """Run `script` [(played seconds, Change or callable)] from another thread, as a performer would."""
    def run() -> None:
        for at, action in script:
            while session.stats().played_seconds < at and not session._stop.is_set():
                time.sleep(0.01)
            session.control.submit(action) if isinstance(action, Change) else action()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def replay(log: Path, tmp_path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    codes, wav = tmp_path / f"{name}.npy", tmp_path / f"{name}.wav"
    assert main(["render", "--replay", str(log), "--device", "cpu", "--out", str(wav), "--codes-out", str(codes)]) == 0
    return np.load(codes), sf.read(wav, dtype="float32")[0]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - test) ** 2), 1e-30)))


def test_a_second_take_has_its_own_log_and_replays_exactly(tiny, tmp_path, vectors_file) -> None:
    from musicsteer.engine.vectors import SteeringVectors

    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2, seed=5),
                    SteeringVectors.load(vectors_file), window_seconds=2.0, keep_seconds=0.5)  # slides
    session = StreamingSession(gen, StreamOptions(seconds=4.0, output_device="null", record=tmp_path / "first.wav",
                                                  record_dir=tmp_path), keep_codes=True)
    # (played times: generation runs about a second ahead, and must not have finished by the last one)
    perform(session, [(0.4, Change("alpha", 0.7)), (1.0, lambda: session.start_recording("second.wav", live=True)),
                      (1.4, Change("mix", {"jazz": 1.0}, seconds=0.5)), (1.8, Change("prompt", "calm jazz"))])
    session.run()
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    first, second = read_log(tmp_path / "first.jsonl"), read_log(tmp_path / "second.jsonl")
    assert first.start_step == 0 and 25 < second.start_step < 125
    assert first.end["frames"] == second.start_step  # the takes meet at a frame: nothing lost between them
    assert second.start_step + second.end["frames"] == live.shape[-1] == 200
    assert len(sf.read(tmp_path / "second.wav")[0]) == second.end["frames"] * HOP
    # The second log holds the change made before it (at a negative position) and those during it,
    # with steps and samples counted in the take: inside its WAV, not past its end.
    lines = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()[1:-1]]
    changes = [line for line in lines if "param" in line]
    assert [c["param"] for c in changes] == ["alpha", "mix", "prompt"]
    assert changes[0]["step"] < 0 and all(0 < c["step"] < second.end["frames"] for c in changes[1:])
    assert all(c["sample"] == c["step"] * HOP for c in changes)
    assert [c.param for _, c in first.changes] == ["alpha"]  # the first take ended before the rest
    # Each take replays to its own codes; the second take's audio is the one-shot decode of its frames.
    for log, start, name in ((first, 0, "first"), (second, second.start_step, "second")):
        codes, audio = replay(tmp_path / f"{name}.jsonl", tmp_path, f"{name}-replayed")
        assert np.array_equal(codes, live[:, start : start + log.end["frames"]]), name
        recorded = sf.read(tmp_path / f"{name}.wav", dtype="float32")[0]
        # A take cut mid-session ends on samples the stream settled with frames past the cut (the
        # decoder's 4-frame lookahead), which a replay of the take alone does not have.
        settled = len(recorded) - (5 * HOP if name == "first" else 0)
        assert audio.shape == recorded.shape and snr_db(audio[:settled], recorded[:settled]) > 30, name


def test_a_take_from_an_audio_prompt_counts_positions_in_the_recording(tiny, tmp_path) -> None:
    init = tmp_path / "init.wav"
    t = np.arange(2 * 32000) / 32000
    sf.write(init, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 32000)
    gen = Generator(tiny, Controls(prompt="rock", seed=3))
    prompt = prompt_codes_from(tiny, str(init), 10.0)
    session = StreamingSession(gen, StreamOptions(seconds=4.0, output_device="null", record=tmp_path / "cont.wav"),
                               prompt, init_audio={"path": str(init), "sha256": _sha(init), "seconds": 10.0},
                               keep_codes=True)
    perform(session, [(1.0, Change("guidance", 4.0)), (2.0, Change("temperature", 0.8))])
    session.run()
    log = read_log(tmp_path / "cont.jsonl")
    length = len(sf.read(tmp_path / "cont.wav")[0])
    assert length == 4 * 32000 and log.header["prompt_frames"] == prompt.shape[-1] == 100
    samples = [json.loads(line)["sample"] for line in (tmp_path / "cont.jsonl").read_text().splitlines()[1:-1]]
    # A change applied at step s starts at s frames into the recording, which holds the continuation
    # only: not 100 frames (the prompt) later, and so always inside the WAV.
    assert samples == [step * HOP for step, _ in session.applied] and len(samples) == 2
    assert all(0 < sample < length for sample in samples)
    codes, _ = replay(tmp_path / "cont.jsonl", tmp_path, "cont-replayed")
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    assert np.array_equal(codes, np.concatenate([prompt[0].numpy(), live], axis=-1))  # render's layout


def _sha(path: Path) -> str:
    from musicsteer.commands.render import sha256_of

    return sha256_of(str(path))


# ---- where a take may go ------------------------------------------------------------------------
def test_take_paths_are_checked_before_anything_is_opened(tmp_path) -> None:
    (tmp_path / "old.wav").write_bytes(b"precious")
    (tmp_path / "log-only.jsonl").write_text("precious")
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path, tmp_path / "out" / "up")
    cases = [
        (tmp_path / "take.jsonl", None, "a recording is a WAV file"),  # the WAV and its log would be one file
        (tmp_path / "old.wav", None, "old.wav exists; give another name, or --overwrite"),
        (tmp_path / "log-only.wav", None, "log-only.jsonl exists"),  # its log would overwrite a file
        (tmp_path / "pipe.wav", None, "is not a regular file"),
        (tmp_path / "missing" / "t.wav", None, "does not exist"),
        ("../outside.wav", tmp_path / "out", "is outside it"),
        (str(tmp_path / "x.wav"), tmp_path / "out", "is outside it"),  # absolute, elsewhere
        ("up/x.wav", tmp_path / "out", "is outside it"),  # a symlink out of the folder
        ("a\0b.wav", tmp_path, "cannot record to"),
    ]
    for path, folder, words in cases:
        with pytest.raises(MusicsteerError) as err:
            take_path(path, folder)
        assert words in str(err.value) and "\n" not in str(err.value), (path, str(err.value))
    assert (tmp_path / "old.wav").read_bytes() == b"precious"
    assert take_path(tmp_path / "old.wav", overwrite=True) == tmp_path / "old.wav"
    assert take_path("sub/../t.wav", tmp_path / "out") == (tmp_path / "out" / "t.wav")
    with pytest.raises(MusicsteerError, match="is not a regular file"):
        take_path(tmp_path / "pipe.wav", overwrite=True)  # never, even when overwriting is allowed


def test_play_refuses_bad_record_paths_in_one_line_before_generating(tmp_path, capsys) -> None:
    (tmp_path / "old.wav").write_bytes(b"precious")
    base = [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
            "--output-device", "null", "--seconds", "0.5", "--osc-port", "0"]
    assert "a recording is a WAV file" in cli_error([*base[3:], "--record", str(tmp_path / "take.jsonl")], capsys)
    result = subprocess.run([*base, "--record", str(tmp_path / "old.wav")], capture_output=True, text=True,
                            timeout=120)  # once through the console script
    assert result.returncode == 2 and "old.wav exists" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "old.wav").read_bytes() == b"precious"
    result = subprocess.run([*base, "--record", str(tmp_path / "old.wav"), "--overwrite"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(sf.read(tmp_path / "old.wav")[0]) == 16000 and read_log(tmp_path / "old.jsonl").end["frames"] == 25
    assert "recordings folder" in cli_error([*base[3:], "--record-dir", str(tmp_path / "nope")], capsys)


class _Client:
    def __init__(self, target: tuple[str, int]) -> None:
        from pythonosc.osc_message import OscMessage

        self._parse = OscMessage
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.target = target

    def ask(self, address: str, *args: object) -> tuple[str, list]:
        self.sock.sendto(_build(address, *args), self.target)
        return self.receive()

    def receive(self) -> tuple[str, list]:
        message = self._parse(self.sock.recv(65536))
        return message.address, list(message.params)


@contextlib.contextmanager
def served(session: StreamingSession) -> Iterator[_Client]:
    """The session running, with an OSC server on a free port and a client of it; all stopped after."""
    server = OscServer(session, port=0)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    server.start()
    try:
        yield _Client(server.address)
    finally:
        server.stop()
        session.stop()
        runner.join(timeout=30)


def test_live_takes_stay_in_the_recordings_folder_and_never_block_the_controls(tiny, tmp_path) -> None:
    folder = tmp_path / "takes"
    folder.mkdir()
    (folder / "kept.wav").write_bytes(b"precious")
    os.mkfifo(folder / "pipe.wav")
    os.symlink(tmp_path, folder / "up")
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(output_device="null", record_dir=folder))
    with served(session) as client:
        for name, words in (("../escape.wav", "is outside it"), (str(tmp_path / "abs.wav"), "is outside it"),
                            ("up/link.wav", "is outside it"), ("kept.wav", "exists"),
                            ("pipe.wav", "not a regular file"), ("t.jsonl", "WAV file")):
            began = time.monotonic()
            address, args = client.ask("/musicsteer/record/start", name)
            assert address == "/musicsteer/error" and words in args[0], (name, args)
            assert time.monotonic() - began < 2  # answered at once: the FIFO was never opened
        assert client.ask("/musicsteer/ping", 1) == ("/musicsteer/pong", [1])
        address, args = client.ask("/musicsteer/record/start", 1.0)  # a button: a new, named take
        assert address == "/musicsteer/record/started" and Path(args[0]).parent == folder
        assert Path(args[0]).name.startswith("take-") and args[0].endswith(".wav")
        time.sleep(0.5)
        assert client.ask("/musicsteer/record/stop") == ("/musicsteer/record/stopped", [args[0]])
        status = client.ask("/musicsteer/status")[1]
        assert status[status.index("refused.refused_take") + 1] == 6
    assert session.error is None
    assert (folder / "kept.wav").read_bytes() == b"precious" and not (tmp_path / "escape.wav").exists()
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".jsonl") == [Path(args[0]).stem + ".jsonl"]


# ---- prompts ----------------------------------------------------------------------------------------
def test_a_long_prompt_sent_live_is_encoded_off_the_generation_thread(tiny, tmp_path) -> None:
    """The text encoder made slow (1.5 s, what musicgen-small's T5 takes here for a long prompt: the one
    thing the tiny model cannot show) must not stall playback with the default 1 s buffer."""
    encoder = tiny.model.text_encoder
    threads: list[str] = []
    original = encoder.forward

    def slow(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if threading.current_thread().name == "musicsteer-prompt":
            time.sleep(1.5)
        return original(*args, **kwargs)

    encoder.forward = slow
    try:
        session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                                   StreamOptions(seconds=5.0, output_device="null", record=tmp_path / "p.wav"))
        long_prompt = ("an epic orchestral piece with soaring strings and thundering drums " * 8)[:500]
        perform(session, [(1.0, Change("prompt", long_prompt))])
        stats = session.run()
    finally:
        encoder.forward = original
    assert threads.count("musicsteer-prompt") == 1 and "musicsteer-generation" not in threads
    assert stats.underrun_events == 0 and stats.rebuffers == 0
    log = read_log(tmp_path / "p.jsonl")
    assert [c.value for _, c in log.changes] == [long_prompt]
    step = log.changes[0][0]
    assert step > 1.5 * 50  # applied when ready, at a token boundary, and logged at that step
    codes, _ = replay(tmp_path / "p.jsonl", tmp_path, "p-replayed")  # replay encodes at that step: same codes
    assert codes.shape[-1] == 250


def test_a_prompt_longer_than_the_encoder_takes_is_cut_and_the_performer_told(tmp_path) -> None:
    lm = in_memory()
    lm.processor.tokenizer.model_max_length = 8
    gen = Generator(lm, Controls(prompt="rock"))
    told: list[Notice] = []
    gen.listeners.add(lambda event: told.append(event) if isinstance(event, Notice) else None)
    gen.start()
    gen.control.submit(Change("prompt", "a very long prompt about many different instruments playing"))
    gen.prompts.settle()
    gen.step()
    assert gen.control.values.prompt.startswith("a very long")
    assert len(told) == 1 and told[0].level == "warning" and "cut to the text encoder's 8 tokens" in told[0].text


def test_status_names_every_fault_count(tiny) -> None:
    session = StreamingSession(Generator(tiny, Controls(prompt="rock"), random_vectors(tiny)),
                               StreamOptions(seconds=0.2, output_device="null"))
    session.run()
    status = session.status()
    for key in ("underruns", "rebuffers", "xruns", "callback_errors", "recording_error", "device_error", "notices"):
        assert key in status, key


# ---- a recording that fails -------------------------------------------------------------------------
def test_a_full_disk_is_told_at_once_and_at_the_end_and_the_audio_before_it_kept(tmp_path) -> None:
    """`play --record` onto a real 256 KiB file system: about 2 s of audio fit in a 6 s take."""
    with tmpfs(tmp_path / "small", "256k") as disk:
        take = disk / "take.wav"
        proc = subprocess.Popen(
            [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
             "--output-device", "null", "--seconds", "6", "--osc-port", "0", "--record", str(take)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [proc.stderr.readline() for _ in range(2)]
        port = next(int(line.rsplit(":", 1)[1]) for line in lines if line.startswith("listening for OSC"))
        assert any("warning: disk nearly full" in line for line in lines), lines  # told at the start
        client = _Client(("127.0.0.1", port))
        client.sock.sendto(_build("/musicsteer/subscribe"), client.target)
        told, began = [], time.monotonic()
        while not told and time.monotonic() - began < 20:  # status messages, then the error, at once
            address, args = client.receive()
            told += [args[0]] if address == "/musicsteer/error" else []
        _, stderr = proc.communicate(timeout=60)
        kept = sf.info(take).frames / 32000
        end = json.loads(take.with_suffix(".jsonl").read_text().splitlines()[-1])["end"]
    # the end record says what the take made (a replay regenerates it all) and what its WAV holds
    assert end["frames"] == 6 * 50 and end["wav_frames"] == round(kept * 32000) // 640, end
    assert told and "No space left on device" in told[0], told
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("musicsteer: error: recording") and "No space left on device" in last, stderr
    assert f"{kept:.2f} s safely on disk in {take}" in last and 1.0 < kept < 2.2  # readable, and said how much
    assert "recorded " not in stderr  # never reported as a good recording


def _build(address: str, *args: object) -> bytes:
    from pythonosc.osc_message_builder import build_msg

    return build_msg(address, list(args)).dgram


def test_many_scheduled_prompts_are_encoded_ahead_or_when_due_never_refused(tiny) -> None:
    """A replayed log or an automation file may hold any number of prompt changes: past the prompt
    thread's queue they are encoded when due, never refused."""
    from musicsteer.engine.generator import render_codes
    from musicsteer.engine.prompts import PENDING

    gen = Generator(tiny, Controls(prompt="rock"))
    for i in range(3 * PENDING):
        gen.control.submit(Change("prompt", f"prompt number {i}"), at_step=2 * i + 1)
    render_codes(gen, 6 * PENDING + 10)
    assert gen.control.values.prompt == f"prompt number {3 * PENDING - 1}" and not gen.control.counts
    gen.prompts.close()


# ---- what a hostile review found -----------------------------------------------------------------
def test_a_record_button_makes_one_take_per_press_in_a_relative_recordings_folder(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "takes").mkdir()
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(output_device="null", record_dir="takes"))
    with served(session) as client:
        address, args = client.ask("/musicsteer/record/start", 1.0)  # press
        assert address == "/musicsteer/record/started" and Path(args[0]).parent == tmp_path / "takes", args
        client.sock.sendto(_build("/musicsteer/record/start", 0.0), client.target)  # release: nothing
        assert client.ask("/musicsteer/ping", 2) == ("/musicsteer/pong", [2])  # (the only answer that comes)
        assert client.ask("/musicsteer/record/stop") == ("/musicsteer/record/stopped", [args[0]])
    assert [p.name for p in (tmp_path / "takes").glob("*.wav")] == [Path(args[0]).name]


def test_a_take_log_that_fails_is_told_at_once(tmp_path) -> None:
    from musicsteer.engine.session_log import SessionLog

    with tmpfs(tmp_path / "tiny", "8k") as disk:
        log = SessionLog(disk / "t.jsonl", {"model": "tiny"})
        told: list[str] = []
        log.on_error = told.append
        for step in range(2000):  # about 100 KB of lines for an 8 KB disk
            log.record(step, step * HOP, Change("alpha", 0.5))
        log.close(end={"steps": 2000, "frames": 2000})
    assert len(told) == 1 and "No space left on device" in told[0] and log.error == told[0]


def test_replay_refuses_flags_the_log_decides_and_takes_a_moved_audio_prompt(tiny, tmp_path, capsys) -> None:
    init = tmp_path / "init.wav"
    sf.write(init, (0.2 * np.sin(np.arange(32000) / 10)).astype(np.float32), 32000)
    session = StreamingSession(Generator(tiny, Controls(prompt="rock", seed=1)),
                               StreamOptions(seconds=1.0, output_device="null", record=tmp_path / "c.wav"),
                               prompt_codes_from(tiny, str(init), 10.0),
                               init_audio={"path": str(init), "sha256": _sha(init), "seconds": 10.0}, keep_codes=True)
    session.run()
    log, out = str(tmp_path / "c.jsonl"), str(tmp_path / "r.wav")
    for flag in (["--prompt", "jazz"], ["--seed", "5"], ["--alpha", "0.3"], ["--init-seconds", "2"]):
        assert main(["render", "--replay", log, "--out", out, "--device", "cpu", *flag]) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]} cannot be given with --replay" in err and err.count("\n") == 1, err
    moved = tmp_path / "moved.wav"
    init.rename(moved)
    assert main(["render", "--replay", log, "--out", out, "--device", "cpu", "--codes-out", str(tmp_path / "r.npy"),
                 "--init-audio", str(moved)]) == 0
    live = np.stack([c.numpy() for c in session.codes], axis=-1)
    assert np.array_equal(np.load(tmp_path / "r.npy")[:, -live.shape[-1]:], live)


def test_empty_and_control_character_names_and_a_wrong_take_start_are_refused(tmp_path) -> None:
    for name in ("new\nline.wav", "tab\there.wav", "\x1b[31mred.wav"):
        with pytest.raises(MusicsteerError, match="control characters"):
            take_path(name, tmp_path)
    result = subprocess.run([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu",
                             "--output-device", "null", "--seconds", "0.5", "--osc-port", "0", "--record", ""],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "a recording is a WAV file" in result.stderr, result.stderr
    header = {"format": "musicsteer.session/2", "model": "tiny", "controls": {}, "settings": {},
              "sample_rate": 32000, "frame_rate": 50, "take": {"start_step": 10, "start_sample": 999}}
    (tmp_path / "t.jsonl").write_text(json.dumps(header) + "\n")
    with pytest.raises(MusicsteerError, match="start_sample must be its start_step frames"):
        read_log(tmp_path / "t.jsonl")


def test_sigterm_during_start_up_is_one_line_not_a_silent_kill() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu",
                             "--output-device", "null", "--osc-port", "0"], stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0) and "Traceback" not in stderr, (proc.returncode, stderr)


def test_a_flood_of_take_starts_never_holds_the_performers_stop(tmp_path):
    """Live record requests wait for the takes thread, one start per source: a flood of starts from one
    host (OSC allows 2,000 messages a second) keeps only its newest waiting, starts from many hosts keep the
    newest MAX_PENDING, every start that gave way is answered "superseded", and the performer's stop, sent
    after the flood, is never refused and runs after the starts still waiting."""
    from musicsteer.engine.take_requests import MAX_PENDING, SUPERSEDED
    from musicsteer.engine.takes import Recordings

    recordings = Recordings(32000, 1, 640, dict, lambda: 0, lambda level, text: None, folder=tmp_path)
    release, started, ran, answers = threading.Event(), threading.Event(), [], {}

    def ask(kind: str, source: str, name: str) -> None:
        def action():
            started.set()
            release.wait(10)
            ran.append(name)
        recordings.later(action, lambda path, error: answers.setdefault(name, error), kind, source)

    ask("start", "10.0.0.1", "first")
    assert started.wait(10)  # the takes thread runs it, held by `release`: what follows waits
    for i in range(50):
        ask("start", "10.0.0.66", f"hog-{i}")  # one host: each replaces its own waiting one
    for host in range(MAX_PENDING + 3):
        ask("start", f"10.0.1.{host}", f"many-{host}")  # many hosts: the oldest waiting gives way
    ask("stop", "127.0.0.1", "stop")
    ask("stop", "127.0.0.1", "stop-again")  # the same stop twice: joined, one run, both answered
    release.set()
    recordings.close(padded=False)
    kept = [f"many-{host}" for host in range(3, MAX_PENDING + 3)]
    assert ran == ["first", *kept, "stop"]
    assert all(answers[f"hog-{i}"] == SUPERSEDED for i in range(50))
    assert all(answers[f"many-{host}"] == SUPERSEDED for host in range(3))
    assert all(answers[name] is None for name in ["first", *kept, "stop", "stop-again"])
    recordings.later(lambda: None, lambda path, error: answers.setdefault("again", error), "stop", "x")
    recordings.close(padded=False)  # the queue is free again after close
    assert answers["again"] is None


def test_a_take_request_that_fails_unexpectedly_is_still_answered(tmp_path):
    """A surface always hears back: an error that is not ours to name (found as a UnicodeEncodeError from
    libsndfile) reaches `done` as one line, and the takes thread goes on."""
    from musicsteer.engine.takes import Recordings

    recordings = Recordings(32000, 1, 640, dict, lambda: 0, lambda level, text: None, folder=tmp_path)
    answers = []

    def fails():
        raise UnicodeEncodeError("utf-8", "caf\udce9", 3, 4, "surrogates not allowed")

    recordings.later(fails, lambda path, error: answers.append(error))
    recordings.later(lambda: None, lambda path, error: answers.append(error))
    recordings.close(padded=False)
    assert answers[0].startswith("UnicodeEncodeError: ") and answers[1] is None
