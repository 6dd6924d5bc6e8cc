"""Recorder: exact round trips, repeated takes, SIGKILL safety, and clear errors."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicsteer.engine import recorder as recorder_module
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.recorder import Recorder

RATE = 32000
REPO = Path(__file__).resolve().parents[1]


def ramp(start: int, n: int) -> np.ndarray:
    """A stereo ramp whose every sample is exact in float32 and unique within the test's length."""
    idx = np.arange(start, start + n, dtype=np.float64)
    left = (idx % 1_000_000) / 1_048_576.0
    return np.stack([left, -left]).astype(np.float32)


def wav_data_size(path: Path) -> int:
    """The data chunk's size field as written in the header (not what libsndfile infers)."""
    head = path.read_bytes()[:4096]
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk == b"data":
            return size
        pos += 8 + size + (size & 1)
    raise AssertionError("no data chunk")


def record(path: Path, blocks: list[np.ndarray], **kwargs) -> Recorder:
    rec = Recorder(path, RATE, 2, **kwargs)
    rec.start()
    for block in blocks:
        assert rec.write(block)
    assert rec.stop() == path
    return rec


def test_round_trip_is_exact(tmp_path: Path) -> None:
    audio = np.random.default_rng(0).standard_normal((2, RATE + 123)).astype(np.float32)
    blocks = [audio[:, i : i + 640] for i in range(0, audio.shape[1], 640)]
    rec = record(tmp_path / "take.wav", blocks)
    back, rate = sf.read(tmp_path / "take.wav", dtype="float32", always_2d=True)
    assert rate == RATE and rec.error is None and rec.errors == 0
    assert rec.frames_written == back.shape[0] == audio.shape[1]
    np.testing.assert_array_equal(back.T, audio)
    assert wav_data_size(tmp_path / "take.wav") == audio.size * 4


def test_takes_can_start_and_stop_repeatedly(tmp_path: Path) -> None:
    first = record(tmp_path / "a.wav", [ramp(0, 1000)])
    again = record(tmp_path / "a.wav", [ramp(5000, 700), ramp(5700, 300)])  # a new take replaces the file
    second = record(tmp_path / "b.wav", [ramp(0, 2000)])
    assert (first.frames_written, again.frames_written, second.frames_written) == (1000, 1000, 2000)
    np.testing.assert_array_equal(sf.read(tmp_path / "a.wav", dtype="float32")[0].T, ramp(5000, 1000))
    np.testing.assert_array_equal(sf.read(tmp_path / "b.wav", dtype="float32")[0].T, ramp(0, 2000))
    assert again.stop() == tmp_path / "a.wav"  # stopping twice is harmless
    assert not again.write(ramp(0, 10))  # so is writing after stop: dropped, reported by the return value


def test_header_is_synced_while_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ways of syncing: libsndfile's SFC_UPDATE_HEADER_NOW, and patching the sizes by hand.
    for name, patch in (("native.wav", False), ("patched.wav", True)):
        if patch:
            monkeypatch.setattr(recorder_module, "_NATIVE_HEADER_UPDATE", None)
        rec = Recorder(tmp_path / name, RATE, 2, sync_interval_s=0.05)
        rec.start()
        rec.write(ramp(0, 3200))
        deadline = time.monotonic() + 5
        while wav_data_size(tmp_path / name) != 3200 * 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wav_data_size(tmp_path / name) == 3200 * 8, name
        back, _ = sf.read(tmp_path / name, dtype="float32")  # readable while still open
        np.testing.assert_array_equal(back.T, ramp(0, 3200))
        rec.stop()
        monkeypatch.undo()
        assert rec.error is None


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from musicsteer.engine.recorder import Recorder
    sys.path.insert(0, {tests!r})
    from test_recorder import ramp
    rec = Recorder({path!r}, {rate}, 2, sync_interval_s=0.5)
    rec.start()
    print("started", flush=True)
    start, block, k = time.monotonic(), 640, 0
    while True:  # real-time pace: block k is handed over when its audio would start playing
        delay = start + k * block / {rate} - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        rec.write(ramp(k * block, block))
        k += 1
    """
)


def test_sigkill_leaves_a_valid_wav_with_all_but_the_last_second(tmp_path: Path) -> None:
    path = tmp_path / "killed.wav"
    code = _CHILD.format(tests=str(Path(__file__).parent), path=str(path), rate=RATE)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        started = time.monotonic()
        time.sleep(2.5)
        os.kill(child.pid, signal.SIGKILL)
        elapsed = time.monotonic() - started
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    back, rate = sf.read(path, dtype="float32", always_2d=True)
    kept = back.shape[0] / RATE
    print(f"SIGKILL after {elapsed:.2f} s: the WAV holds {kept:.2f} s (header says {wav_data_size(path) // 8} frames)")
    assert rate == RATE
    assert wav_data_size(path) == back.size * 4 > 0  # the header itself was updated, not inferred
    assert kept >= elapsed - 1.0
    np.testing.assert_array_equal(back.T, ramp(0, back.shape[0]))


@pytest.mark.parametrize("where", ["missing-dir/take.wav", "a-file/take.wav", "."])
def test_unwritable_path_fails_at_construction(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(MusicsteerError) as err:
        Recorder(tmp_path / where, RATE, 2)
    assert "\n" not in str(err.value) and str(err.value).startswith("cannot record to ")


def test_writer_error_is_counted_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(tmp_path / "full.wav", RATE, 2)
    rec.start()
    rec.write(ramp(0, 500))
    deadline = time.monotonic() + 5
    while rec.frames_written < 500 and time.monotonic() < deadline:
        time.sleep(0.01)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rec._file, "write", disk_full)
    assert rec.write(ramp(500, 300))  # the caller never sees the failure
    rec.stop()
    assert rec.errors == 1 and rec.frames_dropped == 300
    assert rec.error is not None and "No space left on device" in rec.error and "\n" not in rec.error
    back, _ = sf.read(tmp_path / "full.wav", dtype="float32")
    np.testing.assert_array_equal(back.T, ramp(0, 500))  # what was written before stays a valid file
