"""Takes: a session's recordings, each a WAV (engine/recorder.py) with its own log beside it.

Where a take may go is checked before anything is opened (`take_path`): a WAV name (`.wav`, so its
log `take.jsonl` can never be the WAV itself), in a folder that exists and is writable, never onto an
existing file unless `overwrite` (the WAV or its log), never onto a FIFO or a device (opening one for
writing blocks until a reader comes). Paths received live (OSC, the web page) go under one
recordings folder: taken relative to it, and refused if they resolve outside it (`..`, an absolute
path elsewhere, a symlink out of it); they are opened on the takes thread, so a slow disk never
holds up the thread that serves the controls.

A take starts at a frame boundary of the decoded stream: the decode thread hands PCM to the current
take under one lock, and a new take starts with the first sample not yet handed out. Its log counts
positions from there (engine/session_log.py). Its music depends on the session before it, but only
back to the last window slide before its first frame (engine/checkpoint.py): the log carries that
slide's checkpoint (or nothing, before the first slide: the header's starting state) and the changes
made since, so `render --replay` resumes there and keeps the take's frames. The session keeps only
the checkpoints a take could still need and the changes since the oldest (`Recordings.slid`): a
window's worth, whatever the session's length.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint
from .errors import MusicsteerError, printable
from .events import Change
from .files import writable_file, writable_folder
from .recorder import LOW_SPACE_SECONDS, Recorder
from .session_log import SessionLog, log_path_for
from .take_requests import TakeRequests

SUFFIX = ".wav"


def take_path(path: str | Path, folder: str | Path | None = None, overwrite: bool = False) -> Path:
    """Check where a take may be written, before anything is opened; MusicsteerError (one line) if not.

    folder: the recordings folder a live path is confined to (None: a start-up path, taken as given).
    overwrite: an existing WAV or log of that name may be replaced (never a FIFO, device or folder).
    """
    try:
        path = Path(path)
        if folder is not None:
            root = Path(folder).resolve()
            path = (root / path).resolve()  # an absolute `path` replaces root; `..` and symlinks resolve
            if not path.is_relative_to(root):
                raise MusicsteerError(f"recordings started live go in {printable(root)}; "
                                      f"{printable(path)} is outside it")
        if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
            raise MusicsteerError(f"a recording's name may not hold control characters: {printable(path)}")
        if path.suffix.lower() != SUFFIX:
            raise MusicsteerError(f"a recording is a WAV file: give a name ending in {SUFFIX}, "
                                  f"not {printable(path.name)}")
        for target in (path, log_path_for(path)):
            writable_file(target, "recording")
            if target.is_symlink() or target.exists():
                if not target.is_file():
                    raise MusicsteerError(f"cannot record to {printable(target)}: it is not a regular file")
                if not overwrite:
                    raise MusicsteerError(f"{printable(target)} exists; give another name, or --overwrite")
    except (OSError, ValueError) as exc:  # a NUL in the name, a folder we may not enter
        raise MusicsteerError(f"cannot record to {printable(path)}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    return path


def new_take_name(folder: str | Path) -> Path:
    """A free name `take-YYYYmmdd-HHMMSS.wav` (numbered if taken) for `folder`, relative to it (a record
    button sends no name)."""
    stem = datetime.now().strftime("take-%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        name = Path(stem + (f"-{n}" if n > 1 else "") + SUFFIX)
        if not (Path(folder) / name).exists() and not log_path_for(Path(folder) / name).exists():
            return name
    raise MusicsteerError(f"no free take name in {printable(folder)}")


def _claim(path: Path, overwrite: bool) -> None:
    """Create `path` without following a symlink or waiting on a FIFO, and make sure it is a regular
    file: closes the gap between take_path's check and the recorder's open."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | (0 if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise MusicsteerError(f"cannot record to {printable(path)}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MusicsteerError(f"cannot record to {printable(path)}: it is not a regular file")
    finally:
        os.close(fd)


class Take:
    """One recording: its WAV, its log, and where it starts in the session (`start_step`, in frames)."""

    def __init__(self, path: Path, sample_rate: int, channels: int, hop: int, overwrite: bool) -> None:
        self.path, self.hop = path, hop
        claimed: list[Path] = []
        recorder = None
        try:
            for target in (path, log_path_for(path)):
                _claim(target, overwrite)
                claimed.append(target)
            self.recorder = recorder = Recorder(path, sample_rate, channels)
            self.log = SessionLog(log_path_for(path))
        except BaseException:
            if recorder is not None:
                recorder.stop()
            for target in claimed if not overwrite else ():  # what this failed attempt made, and only that
                target.unlink(missing_ok=True)
            raise
        self.start_step = 0
        self.samples = 0  # handed to the recorder (what it holds once written: `recorder.seconds`)
        self.space_warned = False

    def begin(self, header: dict[str, Any], start_sample: int, history: list[tuple[int, Change]]) -> None:
        """Start at session sample `start_sample` (a frame boundary), with the changes its music depends on
        (those since the checkpoint in header["resume"], if any, else since the session's start)."""
        self.start_step = start_sample // self.hop
        self.log.header({**header, "take": {"start_step": self.start_step, "start_sample": start_sample}})
        for step, change in history:
            self.record(step, change)
        self.recorder.start()

    def position(self, step: int) -> tuple[int, int]:
        """A session step as (step, sample) counted in this take."""
        step -= self.start_step
        return step, step * self.hop

    def record(self, step: int, change: Change) -> None:
        self.log.record(*self.position(step), change)

    def write(self, pcm: np.ndarray) -> None:
        self.recorder.write(pcm)
        self.samples += pcm.shape[1]

    def finish(self, step: int, padded: bool, heard: dict[str, float] | None = None) -> Take:
        """Close the WAV, then the log with its end record (`frames`: the frames made; `wav_frames`, only when
        the recording failed: the whole frames its WAV holds; `padded`: the session's end was known and
        this take reached it, so replay pads the last delayed codebooks as the stream did; `heard`:
        the session's knob → heard figures, engine/latency.py)."""
        self.recorder.stop()
        end = {"steps": step - self.start_step, "frames": self.samples // self.hop, "padded": padded}
        if self.recorder.error:  # a full disk: the WAV holds less than was made; replay regenerates it all
            end["wav_frames"] = self.recorder.frames_written // self.hop
        self.log.close(end={**end, "knob_to_heard": heard} if heard else end)
        return self

    @property
    def error(self) -> str | None:
        """The recording's first failure (the WAV's, else the log's), one line; None if all is on disk."""
        return self.recorder.error or self.log.error

    @property
    def seconds(self) -> float:
        """Audio safely on disk (readable after a kill)."""
        return self.recorder.seconds

    @property
    def failure(self) -> str | None:
        """One line for the performer if the take failed: what, and how much of it is safe."""
        if not self.error:
            return None
        return f"{self.error.rstrip('. ')}; {self.seconds:.2f} s safely on disk in {printable(self.path)}"


@dataclass
class _Since:
    """A window slide's checkpoint (None: the session's start), the first take frame it can start
    (counted as takes count: new frames, after any audio prompt), and the changes applied since."""

    checkpoint: Checkpoint | None
    first_frame: int
    changes: list[tuple[int, Change]] = field(default_factory=list)


class Recordings:
    """A session's takes: at most one at a time, started and stopped from any thread.

    header(): the session's log header; clock(): the generation step now; notify(level, text): tell
    the performer (a recorder error, low disk space)."""

    def __init__(self, sample_rate: int, channels: int, hop: int, header: Callable[[], dict[str, Any]],
                 clock: Callable[[], int], notify: Callable[[str, str], None], folder: str | Path | None = None,
                 overwrite: bool = False, prompt_frames: int = 0) -> None:
        self.sample_rate, self.channels, self.hop = sample_rate, channels, hop
        self._header, self._clock, self._notify = header, clock, notify
        self.folder = Path(folder if folder is not None else Path.cwd())
        if folder is not None:  # tried now, as a take will use it: a read-only disk is said at start, not mid-set
            writable_folder(self.folder, "recordings folder")
        elif not self.folder.is_dir():
            raise MusicsteerError(f"recordings folder {printable(self.folder)} is not a folder that exists")
        self.folder = self.folder.resolve()  # live names are taken in it, whatever the working folder
        self.overwrite = overwrite
        self.prompt_frames = prompt_frames  # session frames before the first new one (an audio prompt's)
        # What a take started now could depend on: checkpoints, oldest first, each with the changes since.
        self._since: list[_Since] = [_Since(None, 0)]
        self.done: list[Take] = []
        self.current: Take | None = None
        self.emitted = 0  # samples handed to takes, whole frames (the next take starts here)
        # The decoder emits up to a sample, not a frame (engine/streaming_decoder.py), but a take starts
        # and ends on a frame (its log counts frames; replay regenerates frames): the part of a frame
        # emitted so far waits here for the rest. It is in the ring already: only the takes wait.
        self._partial = np.zeros((channels, 0), np.float32)
        self._lock = threading.Lock()
        self._requests = TakeRequests()

    # -- starting and stopping (any thread) ---------------------------------------------------
    def start(self, path: str | Path | None, live: bool = False) -> Path:
        """Start a take (ending the current one); live paths are confined to the recordings folder and
        a missing name gets a new one. Returns the WAV's path; MusicsteerError if it cannot be used."""
        if path is None:
            path = new_take_name(self.folder)
            live = True  # a generated name is always the recordings folder's
        path = take_path(path, self.folder if live else None, self.overwrite)
        current = self.current
        if current is not None and current.path == path:
            raise MusicsteerError(f"already recording to {printable(path)}")
        take = Take(path, self.sample_rate, self.channels, self.hop, self.overwrite)
        take.recorder.on_error = take.log.on_error = lambda text: self._notify("error", text)
        with self._lock:
            # The newest slide before the take's first frame: its checkpoint and the changes since (bounded).
            first = self.emitted // self.hop
            depends = max(i for i, since in enumerate(self._since) if since.first_frame <= first)
            header = self._header()
            if (point := self._since[depends].checkpoint) is not None:
                header["resume"] = point  # serialised by the log's writer thread, not under this lock
            take.begin(header, self.emitted, [c for since in self._since[depends:] for c in since.changes])
            previous, self.current = self.current, take
        if previous is not None:
            self.done.append(previous.finish(self._clock(), padded=False))
        self.watch()
        return path

    def stop(self, padded: bool = False, heard: dict[str, float] | None = None) -> Path | None:
        """End the current take; its path, or None if none was recording."""
        with self._lock:
            take, self.current = self.current, None
        if take is None:
            return None
        self.done.append(take.finish(self._clock(), padded, heard))
        return take.path

    def later(self, action: Callable[[], Path | None], done: Callable[[Path | None, str | None], None],
              kind: str = "start", source: Hashable = None) -> None:
        """Run a live start/stop (`kind`) from `source` (the sender's host) on the takes thread, then
        `done(path, None)` or `done(None, error line)`: file I/O never runs on the thread serving the
        controls, and a flood never holds the performer's stop (engine/take_requests.py)."""
        self._requests.put(kind, source, action, done)

    def close(self, padded: bool, heard: dict[str, float] | None = None) -> None:
        """At the session's end: finish pending live requests, then the current take."""
        self._requests.close()
        self.stop(padded, heard)

    # -- the session's threads ----------------------------------------------------------------
    def write(self, pcm: np.ndarray) -> None:
        """The decode thread: PCM (channels, n) that was just made goes to the current take, in whole
        frames (what ends mid-frame is held until the frame is complete; a stop mid-frame drops it)."""
        with self._lock:
            if self._partial.shape[1]:
                pcm = np.concatenate([self._partial, pcm], axis=1)
            whole = pcm.shape[1] - pcm.shape[1] % self.hop
            self._partial = pcm[:, whole:]
            if whole and self.current is not None:
                self.current.write(pcm[:, :whole])
            self.emitted += whole
            # A checkpoint whose successor can serve every take still to come is never needed again.
            while len(self._since) > 1 and self._since[1].first_frame <= self.emitted // self.hop:
                del self._since[0]

    def applied(self, step: int, change: Change) -> None:
        with self._lock:
            self._since[-1].changes.append((step, change))
            if self.current is not None:
                self.current.record(step, change)

    def slid(self, point: Checkpoint) -> None:
        """The generation thread, at a window slide: later takes may resume from `point`."""
        with self._lock:
            self._since.append(_Since(point, point.first_frame - self.prompt_frames))

    @property
    def history(self) -> list[tuple[int, Change]]:
        """The applied changes a take started now could need, at their steps: those since the oldest
        checkpoint kept (every change of a session that has not slid its window yet)."""
        with self._lock:
            return [c for since in self._since for c in since.changes]

    def describe(self, step: int, kind: str, *payload: Any) -> None:
        """A meter reading (`meter`, scores) or a notice (`notice`, level, text) into the current log."""
        with self._lock:
            take = self.current
            if take is not None:
                record = take.log.record_meter if kind == "meter" else take.log.record_notice
                record(*take.position(step), *payload)

    def watch(self) -> None:
        """Warn once per take when its disk holds less than LOW_SPACE_SECONDS more (called periodically)."""
        take = self.current
        left = take.recorder.seconds_left if take is not None else None
        if take is not None and left is not None and left < LOW_SPACE_SECONDS and not take.space_warned:
            take.space_warned = True
            self._notify("warning", f"disk nearly full: {printable(take.path.parent)} holds about "
                                    f"{left:.0f} s more of recording")

    @property
    def takes(self) -> list[Take]:
        """Finished takes, then the current one."""
        return [*self.done, *([self.current] if self.current is not None else [])]

    @property
    def error(self) -> str | None:
        """The first failed take's error line (and how much of it is safe), if any."""
        return next((take.failure for take in self.takes if take.failure), None)
