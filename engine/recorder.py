"""Recording a session's PCM to WAV from a writer thread, safely against SIGKILL.

`write(block)` only enqueues a copy: disk I/O never runs on the generation thread. The writer thread
appends to a libsndfile WAV. A WAV header stores the data size, which libsndfile only fills in when
the file is closed, so a killed session would leave a header claiming 0 bytes of audio. Measured
here (libsndfile 1.2.2): `SoundFile.flush()` (sf_write_sync) is only an fsync and leaves the header at
0; `sf_command(SFC_UPDATE_HEADER_NOW)` rewrites the RIFF and data sizes. libsndfile writes samples
with plain unbuffered write() calls, so the audio itself is in the kernel as soon as it is written;
refreshing the header every `sync_interval_s` is what makes a killed session's file complete up to
the last refresh. No fsync: a process kill does not lose the page cache, and fsync can stall on
slow disks.

A writer error (disk full, file removed) never propagates into the session: it is counted, reported
in `error`, and what was written before stays a valid file.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import MusicsteerError, one_line

_SFC_UPDATE_HEADER_NOW = 0x1060  # sndfile.h; soundfile does not export it
_BYTES = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
_WAV_LIMIT = 0xFFFFFFFF - 4096  # RIFF sizes are 32-bit; keep room for the header chunks
_STOP = object()




class Recorder:
    """One take: a WAV file fed from any thread, written by its own thread. Use a new one per take."""

    def __init__(self, path: str | Path, sample_rate: int, channels: int, sync_interval_s: float = 0.5,
                 subtype: str = "FLOAT") -> None:
        if sample_rate <= 0 or channels < 1:
            raise ValueError(f"bad recording format: {sample_rate} Hz, {channels} channels")
        if not sync_interval_s > 0:
            raise ValueError(f"sync_interval_s must be > 0, got {sync_interval_s!r}")
        if subtype not in _BYTES:
            raise MusicsteerError(f"unsupported WAV subtype {subtype!r}; use one of {', '.join(_BYTES)}")
        self.path = Path(path)
        self.sample_rate, self.channels, self.subtype = int(sample_rate), int(channels), subtype
        self.sync_interval_s = float(sync_interval_s)
        self.frames_written = 0  # frames on disk (writer thread)
        self.frames_dropped = 0  # frames that could not be written after an error
        self.errors = 0
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopped = False
        self._frame_bytes = _BYTES[subtype] * self.channels
        # Open now: an unwritable path must fail before anything is generated, not minutes later.
        parent = self.path.parent
        if self.path.is_dir():
            raise MusicsteerError(f"cannot record to {self.path}: it is a directory")
        if not parent.is_dir():
            raise MusicsteerError(f"cannot record to {self.path}: directory {parent} does not exist")
        try:
            self._file = sf.SoundFile(self.path, "w", samplerate=self.sample_rate, channels=self.channels,
                                      subtype=subtype, format="WAV")
        except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
            raise MusicsteerError(f"cannot record to {self.path}: {one_line(exc)}") from None

    @property
    def seconds(self) -> float:
        return self.frames_written / self.sample_rate

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Recorder already started; use a new Recorder for a new take")
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name=f"musicsteer-recorder:{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, block: np.ndarray) -> bool:
        """Enqueue a copy of (channels, n) PCM; returns False (and drops it) if the take is not running."""
        if not self._accepting:
            return False
        data = np.array(block, dtype=np.float32, copy=True)
        if data.ndim == 1 and self.channels == 1:
            data = data[np.newaxis, :]
        if data.ndim != 2 or data.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, frames) block, got shape {data.shape}")
        self._queue.put(data)
        return True

    def stop(self) -> Path:
        """Write everything queued, finalise the header, close. Safe to call twice."""
        if self._stopped:
            return self.path
        self._stopped = True
        self._accepting = False
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
        try:
            self._file.close()  # libsndfile writes the final header (and PEAK chunk) on close
        except Exception as exc:
            self._fail(exc)
        return self.path

    # ---- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        last_sync, dirty = time.monotonic(), False
        while True:
            try:
                item = self._queue.get(timeout=self.sync_interval_s)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                dirty |= self._append(item)
            if dirty and time.monotonic() - last_sync >= self.sync_interval_s:
                self._sync()
                last_sync, dirty = time.monotonic(), False

    def _append(self, data: np.ndarray) -> bool:
        frames = data.shape[1]
        if self.error is not None:
            self.frames_dropped += frames  # after a failure, keep the file as it was
            return False
        if (self.frames_written + frames) * self._frame_bytes > _WAV_LIMIT:
            self.frames_dropped += frames
            self._fail(RuntimeError("WAV size limit (4 GiB) reached; recording stopped"))
            return False
        try:
            self._file.write(np.ascontiguousarray(data.T))
        except Exception as exc:
            self.frames_dropped += frames
            self._fail(exc)
            return False
        self.frames_written += frames
        return True

    def _sync(self) -> None:
        try:
            _update_header(self._file, self.path, self.frames_written * self._frame_bytes)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        if self.error is None:
            self.error = f"recording {self.path} failed: {one_line(exc)}"


def _native_header_update():
    """libsndfile's own header refresh, through soundfile's cffi handle (private, so checked)."""
    snd, ffi = getattr(sf, "_snd", None), getattr(sf, "_ffi", None)
    if snd is None or ffi is None or not hasattr(snd, "sf_command"):
        return None
    return lambda f: snd.sf_command(f._file, _SFC_UPDATE_HEADER_NOW, ffi.NULL, 0)


_NATIVE_HEADER_UPDATE = _native_header_update()


def _update_header(f: sf.SoundFile, path: Path, data_bytes: int) -> None:
    """Make the on-disk header describe the frames written so far."""
    if _NATIVE_HEADER_UPDATE is not None:
        _NATIVE_HEADER_UPDATE(f)
    else:  # a soundfile without its cffi handle: patch the sizes by hand
        _patch_wav_sizes(path, data_bytes)


def _patch_wav_sizes(path: Path, data_bytes: int) -> None:
    """Write the RIFF and data chunk sizes in place (a second descriptor; libsndfile's offset is untouched)."""
    fd = os.open(path, os.O_RDWR)
    try:
        head = os.pread(fd, 4096, 0)
        pos = 12
        while pos + 8 <= len(head):
            chunk, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
            if chunk == b"data":
                os.pwrite(fd, struct.pack("<I", pos + data_bytes), 4)  # RIFF size = file length - 8
                os.pwrite(fd, struct.pack("<I", data_bytes), pos + 4)
                return
            pos += 8 + size + (size & 1)
        raise RuntimeError("no data chunk in the WAV header")
    finally:
        os.close(fd)
