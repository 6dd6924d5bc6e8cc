"""`musicsteer play`: real processes playing through a clocked JACK dummy device or the null clock,
real WAV recordings, Ctrl-C and SIGKILL, and endless sessions across several context windows."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli_error, random_vectors
from jack import jack_server

from musicsteer.bench.soak import rss_mb
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.streaming_decoder import StreamingDecoder

PLAY = [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
        "--osc-port", "0"]
SUMMARY = re.compile(r"played ([\d.]+) s; .*underruns (\d+) \(([\d.]+) s\), rebuffers (\d+), xruns (\d+), "
                     r"callback errors (\d+); (\d+) audio callbacks")


def play(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PLAY, *args], capture_output=True, text=True, timeout=timeout)


def summary(stderr: str) -> tuple[float, int, float, int, int, int, int]:
    match = SUMMARY.search(stderr)
    assert match, stderr
    played, underruns, gap, rebuffers, xruns, errors, callbacks = match.groups()
    return float(played), int(underruns), float(gap), int(rebuffers), int(xruns), int(errors), int(callbacks)


def test_plays_five_seconds_through_a_real_portaudio_stream(tmp_path) -> None:
    wav = tmp_path / "jack.wav"
    with jack_server(32000):
        result = play("--seconds", "5", "--output-device", "system", "--record", str(wav), "--prompt", "rock")
    assert result.returncode == 0, result.stderr
    played, underruns, gap, _, xruns, callback_errors, callbacks = summary(result.stderr)
    assert callback_errors == 0 and xruns >= 0  # the device's own counts are in the summary (xruns: load-dependent)
    assert played == pytest.approx(5.0, abs=0.05)
    assert callbacks >= 5 * 32000 // 1024  # the device clock pulled every block
    assert underruns >= 0 and gap >= 0  # counted and reported (a busy CI machine may starve the stream)
    # what was held ahead of the DAC: the default --buffer auto's final lead and the chosen decoder chunk;
    # the default --blocksize auto plays the JACK server's own period (1024 frames here), never a guess
    line = r"audio callbacks; lead \d+ ms \(auto\), decoder chunk [125] frames?, device block 1024; "
    assert re.search(line, result.stderr), result.stderr
    audio, rate = sf.read(wav)
    assert rate == 32000 and len(audio) == 5 * 32000


def test_null_device_gives_a_five_second_wav(tmp_path) -> None:
    wav = tmp_path / "null.wav"
    began = time.monotonic()
    result = play("--seconds", "5", "--output-device", "null", "--record", str(wav), "--buffer", "1.0")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began >= 5.0  # paced by a real-time clock, not as fast as possible
    audio, _ = sf.read(wav)
    assert len(audio) == 5 * 32000
    assert summary(result.stderr)[0] == pytest.approx(5.0, abs=0.05)
    # the buffer asked for; the null clock's auto block
    assert "audio callbacks; buffer 1.00 s, decoder chunk 5 frames, device block 256; " in result.stderr


def _start_endless(wav) -> subprocess.Popen:
    return subprocess.Popen([*PLAY, "--output-device", "null", "--record", str(wav)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _recorded_seconds(wav) -> float:
    try:
        return sf.info(str(wav)).frames / 32000
    except RuntimeError:
        return 0.0


def _wait_recorded(proc, wav, seconds: float, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        got = _recorded_seconds(wav)
        if got >= seconds:
            return got
        time.sleep(0.1)
    raise AssertionError(f"recording did not reach {seconds} s")


def test_ctrl_c_stops_cleanly_and_finalises_the_recording(tmp_path) -> None:
    wav = tmp_path / "ctrlc.wav"
    proc = _start_endless(wav)
    _wait_recorded(proc, wav, 2.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and f"recorded {wav}" in stderr
    audio, _ = sf.read(wav)
    assert len(audio) >= 2 * 32000 and np.isfinite(audio).all()


def test_sigkill_keeps_the_recording_up_to_a_second_before(tmp_path) -> None:
    wav = tmp_path / "killed.wav"
    proc = _start_endless(wav)
    _wait_recorded(proc, wav, 2.0)
    time.sleep(2.0)
    # What a reader saw just before the kill is what must survive, minus at most one second.
    before = _recorded_seconds(wav)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    audio, rate = sf.read(wav)  # opens: the header was kept in sync
    assert rate == 32000 and np.isfinite(audio).all()
    assert len(audio) / rate >= before - 1.0
    assert sf.info(str(wav)).frames == len(audio)


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = {
        "unknown output device": ["--output-device", "no-such-card", "--seconds", "1"],
        "unwritable record path": ["--output-device", "null", "--seconds", "1", "--record", str(blocker / "x.wav")],
        "bad seconds": ["--output-device", "null", "--seconds", "0"],
    }
    for args in cases.values():
        cli_error([*PLAY[3:], *args], capsys)
    with jack_server(48000):  # through the console script
        refused = play("--output-device", "system", "--seconds", "1", "--no-resample")
        resampled = play("--output-device", "system", "--seconds", "1")
    assert refused.returncode == 2 and "refuses 32000 Hz" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert resampled.returncode == 0, resampled.stderr


def test_a_failed_second_take_loses_nothing_already_recorded(tiny, tmp_path) -> None:
    session = StreamingSession(Generator(tiny, Controls(prompt="rock")),
                               StreamOptions(seconds=1.0, output_device="null", record=tmp_path / "take1.wav"))
    with pytest.raises(MusicsteerError):
        session.start_recording(tmp_path / "missing-dir" / "\0bad.wav")
    stats = session.run()
    assert stats.played_seconds == pytest.approx(1.0, abs=0.05)
    assert [take.path for take in session.takes] == [tmp_path / "take1.wav"]
    assert len(sf.read(tmp_path / "take1.wav")[0]) == 32000 and session.takes[0].error is None


def test_endless_session_crosses_windows_without_gaps_repeats_or_growth(tiny) -> None:
    vectors = random_vectors(tiny)
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.3), vectors,
                    window_seconds=1.0, keep_seconds=0.3)  # a 51-position window: slides every ~32 frames
    decoder = StreamingDecoder(tiny)
    gen.start()
    indices, samples, rss, emitted, seams = [], 0, {}, {}, 0
    offset = gen.frame_offset
    while len(indices) < 600:
        frame = gen.step()
        if gen.frame_offset != offset:  # a slide happened in this step: check what the new window carries
            offset, seams = gen.frame_offset, seams + 1
            carried = gen.delay.codes[0, :, : gen.keep]
            played = torch.stack([emitted[i] for i in range(offset, offset + gen.keep)], dim=-1)
            assert torch.equal(carried, played), f"seam {seams} does not continue the played frames"
        if frame is None:
            continue
        indices.append(frame.index)
        emitted[frame.index] = frame.codes[0]
        pcm = decoder.push(frame.codes[0])
        samples += 0 if pcm is None else pcm.shape[1]
        if len(indices) in (150, 600):
            rss[len(indices)] = rss_mb()
    samples += decoder.flush().shape[1]
    assert seams > 10  # many windows, not three
    assert indices == list(range(600))  # every frame once, in order, across every seam
    assert samples == 600 * 640  # continuous audio: no gap, nothing repeated
    assert gen.cache.k.shape[3] == gen.window  # the cache never grew
    assert rss[600] - rss[150] < 25, rss


def test_devices_lists_outputs_and_midi_inputs() -> None:
    import mido

    with jack_server(32000):
        port = mido.Backend("mido.backends.rtmidi", api="UNIX_JACK").open_output("musicsteer-devices", virtual=True)
        try:
            result = subprocess.run([sys.executable, "-m", "musicsteer", "devices", "--midi-api", "jack"],
                                    capture_output=True, text=True, timeout=60)
        finally:
            port.close()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "audio outputs" in out and "system" in out and "null" in out
    assert "MIDI inputs" in out and "musicsteer-devices" in out
