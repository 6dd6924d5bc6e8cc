"""Issue 28 (3): an output device that goes away mid-session is told at once, the session goes on on the clock
(generation, the recording and its log without a gap), and playback returns to the device when it comes back.

A real JACK dummy server is killed (SIGTERM: as a USB interface unplugged, the device leaves) and started
again under the same name, under `musicsteer play` in its own process, with a real OSC subscriber over UDP
and a real WAV take. jackd is started here, not through tests/jack.py: this process must never touch
PortAudio while a server it knew dies (Pa_Terminate aborts then; engine/audio_out.py), so it only asks the
engine's own probe, a child process (engine/audio_player.py), whether the device is there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg
from test_faults import data_chunk, recorded_seconds
from test_play import PLAY

from musicsteer.engine.session_log import read_log

RATE, HOP = 32000, 640
JACK_API = "JACK Audio Connection Kit"


class Jackd:
    """A JACK dummy server under a name of this test's own; `env` points a child's libjack at it."""

    def __init__(self, tag: str) -> None:
        self.name = f"musicsteer-{tag}-{os.getpid()}"
        self.env = dict(os.environ, JACK_DEFAULT_SERVER=self.name, JACK_NO_START_SERVER="1",
                        JACK_NO_AUDIO_RESERVATION="1")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen([shutil.which("jackd") or "jackd", "--no-realtime", "-n", self.name, "-d",
                                      "dummy", "-r", str(RATE), "-p", "1024"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.probe().startswith("present"):
            assert self.proc.poll() is None, f"jackd exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "PortAudio never saw the JACK server's device"
            time.sleep(0.1)

    def probe(self) -> str:
        """The engine's probe, in a child: "present", or "absent REASON"."""
        return subprocess.run([sys.executable, "-m", "musicsteer.engine.audio_player", "--probe", "system", JACK_API],
                              env=self.env, capture_output=True, text=True, timeout=30).stdout.strip()

    def stop(self) -> None:
        """SIGTERM: the server leaves cleanly (SIGKILL would leak a JACK registry slot)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not (met := condition()):
        assert proc is None or proc.poll() is None, f"play ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return met


class Subscriber:
    """A real OSC subscriber: what the engine tells it, (address, args) in order."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.sock.sendto(build_msg("/musicsteer/subscribe", []).dgram, ("127.0.0.1", port))
        self.told: list[tuple[str, list]] = []

    def heard(self, address: str) -> list[list]:
        try:
            while True:
                message = OscMessage(self.sock.recv(65535))
                self.told.append((message.address, message.params))
        except TimeoutError:
            pass
        return [args for a, args in self.told if a == address]

    def status(self) -> dict:
        """The last status: its key/value pairs."""
        args = self.heard("/musicsteer/status")[-1]
        return dict(zip(args[0::2], args[1::2], strict=False))


def start_play(jackd: Jackd, wav: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*PLAY, "--output-device", "system", "--record", str(wav), *extra],
                            env=jackd.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.search(r"listening for OSC on 127\.0\.0\.1:(\d+)", line)
    assert match, line + proc.stderr.read()
    return proc, int(match.group(1))


def connected_to_system(jackd: Jackd) -> bool:
    """Whether some client's port plays into the server's system:playback_1 (jack_lsp -c)."""
    out = subprocess.run(["jack_lsp", "-c", "-s", jackd.name], capture_output=True, text=True, env=jackd.env).stdout
    lines = out.splitlines()
    at = lines.index("system:playback_1") if "system:playback_1" in lines else -1
    return at >= 0 and at + 1 < len(lines) and lines[at + 1].startswith(" ")


def check_take(wav: Path) -> tuple[np.ndarray, object]:
    """The take is finalised and whole: the header covers every byte, and the WAV holds every frame its log
    says was generated (frames × hop), so nothing was dropped while the device was away."""
    audio, rate = sf.read(wav, dtype="float32")
    offset, size = data_chunk(wav)
    assert rate == RATE and size == wav.stat().st_size - offset == len(audio) * 4
    logged = read_log(wav.with_suffix(".jsonl"))
    assert logged.end is not None and logged.end["frames"] * HOP == len(audio)
    return audio, logged


def test_a_device_killed_mid_session_is_told_played_on_the_clock_and_played_again_when_back(tmp_path: Path) -> None:
    jackd, wav = Jackd("back"), tmp_path / "take.wav"
    jackd.start()
    proc = None
    try:
        proc, port = start_play(jackd, wav, "--codes-out", str(tmp_path / "codes.npy"))
        osc = Subscriber(port)
        wait_for(lambda: recorded_seconds(wav) >= 1.5, 120, "the take's first 1.5 s", proc)
        assert connected_to_system(jackd)
        jackd.stop()
        gone = time.monotonic()
        error = wait_for(lambda: osc.heard("/musicsteer/error"), 5, "the loss over OSC", proc)
        told_s = time.monotonic() - gone
        assert len(error) == 1 and error[0][0] == (
            "output device 'system' stopped playing: the device or its server went away; still generating and "
            "recording, paced by the clock; retrying the device every 1.5 s")
        while_lost = recorded_seconds(wav)
        wait_for(lambda: recorded_seconds(wav) >= while_lost + 1.0, 10, "the take to go on while lost", proc)
        status = wait_for(lambda: osc.status().get("device_lost") and osc.status(), 5, "device_lost in status")
        assert "generating and recording on the clock" in status["device_lost"] and status["device_losses"] == 1
        jackd.start()
        back = time.monotonic()
        warning = wait_for(lambda: osc.heard("/musicsteer/warning"), 15, "the return over OSC", proc)
        returned_s = time.monotonic() - back
        assert warning[0][0].startswith("output device 'system' is back: playing again (away ")
        wait_for(lambda: connected_to_system(jackd), 5, "a stream on the returned device")
        status = wait_for(lambda: osc.status().get("device_returns") == 1 and osc.status(), 5, "the return in status")
        assert status["device_lost"] == "" and status["device_error"] == ""
        played = status["seconds"]
        wait_for(lambda: osc.status()["seconds"] >= played + 1.0, 10, "playback to go on on the device", proc)
        print(f"loss told in {told_s:.2f} s; back {returned_s:.2f} s after the server's restart")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        jackd.stop()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert stderr.count("musicsteer: error:") == 1 and stderr.count("is back: playing again") == 1, stderr
    audio, logged = check_take(wav)
    # the take equals its replay: the same codes, regenerated offline from its log
    from musicsteer.cli import main

    assert main(["render", "--replay", str(wav.with_suffix(".jsonl")), "--device", "cpu",
                 "--out", str(tmp_path / "replay.wav"), "--codes-out", str(tmp_path / "replay.npy")]) == 0
    session_codes = np.load(tmp_path / "codes.npy")
    assert np.array_equal(np.load(tmp_path / "replay.npy"), session_codes[:, : logged.end["frames"]])
    assert np.isfinite(audio).all() and len(audio) >= 4 * RATE


def test_stopping_while_the_device_is_away_ends_at_once_with_the_take_whole(tmp_path: Path) -> None:
    """Ctrl-C while on the clock: the abandoned stream is never waited on; exit 0, the take finalised."""
    jackd, wav = Jackd("stop"), tmp_path / "take.wav"
    jackd.start()
    proc = None
    try:
        proc, port = start_play(jackd, wav)
        osc = Subscriber(port)
        wait_for(lambda: recorded_seconds(wav) >= 1.0, 120, "the take's first second", proc)
        jackd.stop()
        wait_for(lambda: osc.heard("/musicsteer/error"), 5, "the loss over OSC", proc)
        time.sleep(2.0)  # a try or two of the device, in flight when the stop comes
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        stop_s = time.monotonic() - began
    finally:
        jackd.stop()
        if proc is not None and proc.poll() is None:
            proc.kill()
    print(f"stopped {stop_s:.2f} s after SIGINT while the device was away")
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert stop_s < 10, stop_s
    audio, _ = check_take(wav)
    assert stderr.strip().splitlines()[-1] == f"recorded {wav} ({len(audio) / RATE:.2f} s)"


_LOST_BEFORE_START = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import numpy as np
    from musicsteer.engine.control import Controls
    from musicsteer.engine.generator import Generator
    from musicsteer.engine.loading import load_model
    from musicsteer.engine.session import StreamingSession, StreamOptions

    told = []
    gen = Generator(load_model("tiny", "cpu", "float32"), Controls(prompt="rock"))
    session = StreamingSession(gen, StreamOptions(seconds=3.0, output_device="system", record={wav!r}))
    gen.listeners.add(lambda e: told.append([e.level, e.text]) if hasattr(e, "level") else None)
    os.kill({jackd}, signal.SIGTERM)  # the device goes away after it was opened, before its first block
    while os.path.exists("/proc/{jackd}") and open("/proc/{jackd}/stat").read().split()[2] != "Z":
        time.sleep(0.01)
    began = time.monotonic()
    stats = session.run()
    print(json.dumps({{"told": told, "elapsed": time.monotonic() - began, "error": stats.device_error,
                      "losses": stats.device_losses, "callbacks": stats.callbacks}}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # PortAudio holds the dead server's stream: nothing may terminate it
    """
)


def test_a_device_lost_before_its_first_block_is_played_on_the_clock(tmp_path: Path) -> None:
    import json

    jackd, wav = Jackd("early"), tmp_path / "take.wav"
    jackd.start()
    try:
        code = _LOST_BEFORE_START.format(wav=str(wav), jackd=jackd.proc.pid)
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env=jackd.env)
    finally:
        jackd.proc.wait(timeout=10)  # the child stopped it
        jackd.proc = None
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"lost before the first block: ran {out['elapsed']:.2f} s; {out['told']}")
    assert out["error"] is None and out["losses"] == 1 and out["callbacks"] > 0
    errors = [text for level, text in out["told"] if level == "error"]  # (a slow machine may add a warning)
    assert len(errors) == 1 and not any("is back" in text for _, text in out["told"])
    assert errors[0].startswith("output device 'system' cannot start: ")
    assert "still generating and recording" in errors[0]
    audio, _ = check_take(wav)
    assert len(audio) == 3 * RATE
