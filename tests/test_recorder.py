"""Recorder: exact round trips, repeated takes, SIGKILL safety, a full disk, RF64 past 4 GiB, clear errors."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tmpfs

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.recorder import LOW_SPACE_SECONDS, Recorder

RATE = 32000
REPO = Path(__file__).resolve().parents[1]


def ramp(start: int, n: int) -> np.ndarray:
    """A stereo ramp whose every sample is exact in float32 and unique within the test's length."""
    idx = np.arange(start, start + n, dtype=np.float64)
    left = (idx % 1_000_000) / 1_048_576.0
    return np.stack([left, -left]).astype(np.float32)


def header(path: Path) -> bytes:
    with open(path, "rb") as fh:  # never read_bytes(): the RF64 test's file is 4 GiB (sparse)
        return fh.read(4096)


def wav_data_size(path: Path) -> int:
    """The data chunk's size field as written in the header (not what libsndfile infers)."""
    head = header(path)
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


def test_header_is_synced_while_recording(tmp_path: Path) -> None:
    path = tmp_path / "open.wav"
    rec = Recorder(path, RATE, 2, sync_interval_s=0.05)
    rec.start()
    rec.write(ramp(0, 3200))
    deadline = time.monotonic() + 5
    while rec.seconds < 0.1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.frames_synced == 3200 and rec.seconds == pytest.approx(0.1)
    assert path.read_bytes()[:4] == b"RIFF"  # under 4 GiB the RF64 writer keeps a plain WAV header
    assert wav_data_size(path) == 3200 * 8
    back, _ = sf.read(path, dtype="float32")  # readable while still open
    np.testing.assert_array_equal(back.T, ramp(0, 3200))
    rec.stop()
    assert rec.error is None and path.read_bytes()[:4] == b"RIFF"


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from musicsteer.engine.recorder import LOW_SPACE_SECONDS, Recorder
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




def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB file system, so the disk really fills (conftest.tmpfs)."""
    with tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


def test_seconds_left_follows_the_free_space(small_disk: Path, tmp_path: Path) -> None:
    bytes_per_second = RATE * 2 * 4
    rec = Recorder(small_disk / "take.wav", RATE, 2, sync_interval_s=0.05)
    start = rec.seconds_left
    assert start == pytest.approx((1 << 20) / bytes_per_second, abs=0.02)  # 4.1 s: less a page of header
    assert rec.low_space and LOW_SPACE_SECONDS == 180.0
    rec.start()
    rec.write(ramp(0, RATE))
    wait_for(lambda: rec.seconds_left < start - 0.9)  # refreshed by the writer at its next header sync
    assert rec.seconds_left == pytest.approx(start - 1.0, abs=0.02)
    rec.stop()
    roomy = Recorder(tmp_path / "roomy.wav", RATE, 2)
    assert roomy.seconds_left > LOW_SPACE_SECONDS and not roomy.low_space
    roomy.stop()


def test_disk_full_keeps_every_frame_before_it_and_reports_once(small_disk: Path) -> None:
    path, block, blocks = small_disk / "take.wav", 640, 300  # 1.5 MiB of audio for a 1 MiB disk
    rec = Recorder(path, RATE, 2, sync_interval_s=0.05)
    calls: list[tuple[str, str]] = []
    rec.on_error = lambda message: calls.append((message, threading.current_thread().name))
    rec.start()
    for k in range(blocks):
        assert rec.write(ramp(k * block, block))  # the producer never sees the failure
    wait_for(lambda: rec.frames_written + rec.frames_dropped == blocks * block)
    # Still open, as a session killed right now would leave it: the header covers every frame on disk.
    kept = rec.frames_written
    print(f"1 MiB tmpfs: {kept} frames ({kept / RATE:.3f} s) kept, {rec.frames_dropped} dropped: {rec.error}")
    assert (1 << 20) - 4096 < 112 + kept * 8 <= 1 << 20  # the disk was used up to its last page
    assert rec.frames_synced == kept and rec.seconds == kept / RATE
    assert sf.info(str(path)).frames == kept and header(path)[:4] == b"RIFF"
    np.testing.assert_array_equal(sf.read(path, dtype="float32")[0].T, ramp(0, kept))
    assert rec.error is not None and "\n" not in rec.error
    assert rec.error.startswith(f"recording {path} failed: ") and "No space left on device" in rec.error
    assert calls == [(rec.error, f"musicsteer-recorder:{path.name}")]  # once, at once, from the writer
    rec.stop()
    assert rec.errors == 1 and len(calls) == 1 and rec.frames_written == kept == sf.info(str(path)).frames
    np.testing.assert_array_equal(sf.read(path, dtype="float32")[0].T, ramp(0, kept))


def ds64(path: Path) -> tuple[int, int, int]:
    """RF64's 64-bit RIFF size, data size and sample-frame count."""
    head = header(path)
    assert head[:4] == b"RF64" and head[12:16] == b"ds64", head[:16]
    return struct.unpack_from("<QQQ", head, 20)


def test_a_take_continues_past_4_gib_as_rf64(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    rec = Recorder(path, RATE, 2, sync_interval_s=0.05)
    # A sparse hole stands in for the take's first 4 GiB (4.7 hours of stereo float at 32 kHz):
    # libsndfile can seek in write mode, so the next frames land past the real 32-bit boundary
    # without writing 4 GiB. Done before start(): the writer thread owns the file afterwards.
    skip = (1 << 32) // 8
    assert rec._file.seek(skip) == skip
    rec.start()
    rec.write(ramp(0, 3200))
    wait_for(lambda: header(path)[:4] == b"RF64")  # the header refresh mid-take switched it
    total = skip + 3200
    for when in ("while recording", "after close"):
        assert ds64(path)[1:] == (total * 8, total), when
        info = sf.info(str(path))
        assert (info.format, info.frames) == ("RF64", total), when
        with sf.SoundFile(path) as back:
            back.seek(skip - 5)
            tail = back.read(dtype="float32")
        assert not tail[:5].any(), when  # the hole reads as silence
        np.testing.assert_array_equal(tail[5:].T, ramp(0, 3200), err_msg=when)
        rec.stop()
    print(f"RF64: {path.stat().st_size} bytes, {path.stat().st_blocks * 512} on disk, header {header(path)[:48]!r}")
    assert rec.error is None and rec.frames_written == 3200
