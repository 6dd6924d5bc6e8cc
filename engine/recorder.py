"""Recording a session's PCM to WAV from a writer thread, safely against SIGKILL, a full disk and 4 GiB.

`write(block)` only enqueues a copy: disk I/O never runs on the generation thread. The writer thread
appends to a libsndfile file. Everything below was measured here on libsndfile 1.2.2 (soundfile 0.14):

* Kill safety. A WAV header stores the data size, which libsndfile only fills in at close, so a killed
  session would leave a header claiming 0 bytes. `SoundFile.flush()` (sf_write_sync) is only an fsync
  and leaves the header at 0; `sf_command(SFC_UPDATE_HEADER_NOW)` rewrites the sizes. libsndfile writes
  samples with plain unbuffered write() calls, so the audio is in the kernel as soon as it is written;
  refreshing the header every `sync_interval_s` makes a killed session's file complete up to the last
  refresh (`seconds`). No fsync: a process kill does not lose the page cache, and fsync can stall.
* Past 4 GiB. RIFF sizes are 32-bit. The file is opened as RF64 with SFC_RF64_AUTO_DOWNGRADE: while
  the data is under 4 GiB every header refresh and the close write a plain WAV header (`RIFF`,
  `WAVE`, a 24-byte JUNK chunk, a WAVE_FORMAT_EXTENSIBLE fmt, fact, data), which every WAV reader
  opens; once past it the same 112 bytes are rewritten in place as `RF64`, size 0xFFFFFFFF, `WAVE`,
  ds64 (the 64-bit sizes), fmt, an empty PAD chunk, data: the audio starts at byte 112 either way.
  Measured with a sparse file seeked past 4 GiB of frames (tests/test_recorder.py): a refresh
  mid-take turns the header into RF64 in 0.15 ms, soundfile reads back every one of the 536,872,912
  frames, and close keeps it RF64. So a take simply continues past 4 GiB.
* A full disk. A failing write raises after libsndfile wrote part of the block (on a 1 MiB tmpfs:
  the block is cut at the last free page). A header refresh still succeeds, since it rewrites bytes
  in place and needs no new blocks, and it covers every byte on disk, so the file stays a valid WAV
  holding all audio up to the fault; the frames of the cut block that made it are counted as written.

A writer error (disk full, file removed) never propagates into the session: it is kept in `error`
(one line, naming the file), counted, passed once to `on_error`, and what was written stays valid.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import MusicsteerError, one_line

LOW_SPACE_SECONDS = 180.0  # warn while recording once the disk holds less audio than this (seconds)
_SFC_UPDATE_HEADER_NOW = 0x1060  # sndfile.h; soundfile does not export these
_SFC_RF64_AUTO_DOWNGRADE = 0x1210
_BYTES = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
_STOP = object()


def _libsndfile() -> tuple:
    """soundfile's cffi handle on libsndfile (private, so checked): sf_command is not wrapped."""
    snd, ffi = getattr(sf, "_snd", None), getattr(sf, "_ffi", None)
    if snd is None or ffi is None or not hasattr(snd, "sf_command"):
        raise MusicsteerError("this soundfile does not expose libsndfile (soundfile>=0.12 needed to record)")
    return snd, ffi


class Recorder:
    """One take: a WAV file fed from any thread, written by its own thread. Use a new one per take.

    Public figures (read from any thread): `frames_written` (handed to the disk), `frames_synced` and
    `seconds` (covered by a refreshed header: readable after a kill), `frames_dropped`, `errors`,
    `error`, `seconds_left` (audio seconds the file system's free space still holds at this format,
    from statvfs at construction and at every header sync; None if unknown) and `low_space`. Set
    `on_error` to be told of the first error at once.
    """

    def __init__(self, path: str | Path, sample_rate: int, channels: int, sync_interval_s: float = 0.5,
                 subtype: str = "FLOAT") -> None:
        """Open `path` for writing now; raises MusicsteerError (one line) if it cannot be recorded to."""
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
        self.frames_synced = 0  # frames the on-disk header covers (writer thread)
        self.frames_dropped = 0  # frames that could not be written after an error
        self.errors = 0
        self.error: str | None = None
        # Called once with `error`, from the thread that hit it (the writer; stop() for a failed close).
        self.on_error: Callable[[str], None] | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopped = False
        self._bytes_per_second = _BYTES[subtype] * self.channels * self.sample_rate
        self._snd, self._ffi = _libsndfile()
        # Open now: an unwritable path must fail before anything is generated, not minutes later.
        parent = self.path.parent
        if self.path.is_dir():
            raise MusicsteerError(f"cannot record to {self.path}: it is a directory")
        if not parent.is_dir():
            raise MusicsteerError(f"cannot record to {self.path}: directory {parent} does not exist")
        try:
            self._file = sf.SoundFile(self.path, "w", samplerate=self.sample_rate, channels=self.channels,
                                      subtype=subtype, format="RF64")
        except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
            raise MusicsteerError(f"cannot record to {self.path}: {one_line(exc)}") from None
        self._command(_SFC_RF64_AUTO_DOWNGRADE, 1)  # a plain WAV header until the data passes 4 GiB
        # libsndfile opens with an RF64 header of unknown size; rewrite it now, so the file is a plain
        # (empty) WAV to every reader from the start, not only after the first sync.
        self._command(_SFC_UPDATE_HEADER_NOW, 0)
        self.seconds_left: float | None = None
        self._measure_space()

    @property
    def seconds(self) -> float:
        """Seconds of audio safely on disk: written and covered by a refreshed header."""
        return self.frames_synced / self.sample_rate

    @property
    def low_space(self) -> bool:
        """True while the free space holds less than LOW_SPACE_SECONDS of audio at this format."""
        return self.seconds_left is not None and self.seconds_left < LOW_SPACE_SECONDS

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
            self._file.close()  # libsndfile writes the final header on close
        except Exception as exc:
            self._fail(exc)
        else:
            self.frames_synced = self.frames_written
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
                self._measure_space()
                last_sync, dirty = time.monotonic(), False

    def _append(self, data: np.ndarray) -> bool:
        frames = data.shape[1]
        if self.error is not None:
            self.frames_dropped += frames  # after a failure, keep the file as it was
            return False
        try:
            self._file.write(np.ascontiguousarray(data.T))
        except Exception as exc:
            self._fail(self._explained(exc))
            self._salvage(frames)
            return False
        self.frames_written += frames
        return True

    def _salvage(self, frames: int) -> None:
        """After a failed write: make the header cover what reached the disk, and count it."""
        if not self._sync():
            self.frames_dropped += frames
            return
        try:  # the refreshed header counts every whole frame on disk, part of the failed block included
            on_disk = sf.info(str(self.path)).frames
        except Exception:  # noqa: BLE001 - the file is gone or unreadable: nothing more to count
            on_disk = self.frames_written
        kept = min(max(on_disk - self.frames_written, 0), frames)
        self.frames_written += kept
        self.frames_synced = self.frames_written
        self.frames_dropped += frames - kept

    def _sync(self) -> bool:
        """Refresh the on-disk header to the frames written so far; False (and recorded) if it failed."""
        try:
            self._command(_SFC_UPDATE_HEADER_NOW, 0)
        except Exception as exc:
            self._fail(exc)
            return False
        self.frames_synced = self.frames_written
        return True

    def _command(self, command: int, value: int) -> None:
        self._snd.sf_command(self._file._file, command, self._ffi.NULL, value)

    def _explained(self, exc: Exception) -> object:
        """The exception says only "System error."; libsndfile's handle keeps the errno's text."""
        if isinstance(exc, sf.LibsndfileError):
            detail = self._ffi.string(self._snd.sf_strerror(self._file._file)).decode(errors="replace")
            if detail and detail != "No Error.":
                return detail  # e.g. "System error : No space left on device."
        return exc

    def _measure_space(self) -> None:
        try:
            vfs = os.statvfs(self.path.parent)
        except OSError:
            self.seconds_left = None
        else:
            self.seconds_left = vfs.f_bavail * vfs.f_frsize / self._bytes_per_second

    def _fail(self, exc: object) -> None:
        self.errors += 1
        if self.error is None:
            self.error = f"recording {self.path} failed: {one_line(exc)}"
            if self.on_error is not None:
                # A broken listener must not stop the writer: the error is kept in `error` regardless.
                with contextlib.suppress(Exception):
                    self.on_error(self.error)
