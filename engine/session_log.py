"""The session log: `session.jsonl` beside every recording, enough to regenerate the same codes.

Line 1 is a header (model, seed, prompt, every starting control value, the vectors file and its
sha256, the window settings, the engine version). Then one line per applied change:
`{"step": token, "sample": index, "param": ..., "value": ..., "seconds": glide}` where `step` is
the engine's token clock (the change took effect before that token was generated) and `sample` is
where that token's frame starts in the recording. A last line `{"end": {...}}` closes a session that
ended normally; a killed session simply lacks it. `render --replay` reads it back (`read_log`).

Lines are written by a writer thread: the generation thread only enqueues (no disk I/O there), and
every line is flushed as it is written, so a crash loses at most the line in flight.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MusicsteerError
from .events import Change

FORMAT = "musicsteer.session/1"
_STOP = object()


def log_path_for(recording: str | Path) -> Path:
    """`take.wav` -> `take.jsonl`."""
    return Path(recording).with_suffix(".jsonl")


class SessionLog:
    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("w", encoding="utf-8")
        except OSError as err:
            raise MusicsteerError(f"cannot write session log {self.path}: {err.strerror or err}") from None
        self._file.write(json.dumps({"format": FORMAT, **header}) + "\n")
        self._file.flush()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="musicsteer-session-log", daemon=True)
        self._thread.start()
        self.lines = 0

    def record(self, step: int, sample: int, change: Change) -> None:
        """Enqueue one applied change (any thread; never blocks on disk)."""
        self._queue.put({"step": step, "sample": sample, "param": change.param, "value": change.value,
                         "seconds": change.seconds})

    def record_meter(self, step: int, sample: int, scores: dict[str, float]) -> None:
        """A genre-meter reading (read_log skips these: they describe, they do not change anything)."""
        self._queue.put({"step": step, "sample": sample, "meter": scores})

    def close(self, end: dict[str, Any] | None = None) -> Path:
        if end is not None:
            self._queue.put({"end": end})
        self._queue.put(_STOP)
        self._thread.join()
        self._file.close()
        return self.path

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            self._file.write(json.dumps(item) + "\n")
            self._file.flush()
            self.lines += 1


@dataclass
class LoggedSession:
    header: dict[str, Any]
    changes: list[tuple[int, Change]] = field(default_factory=list)
    end: dict[str, Any] | None = None


def read_log(path: str | Path) -> LoggedSession:
    """Parse a session log; MusicsteerError (one line, with the line number) if it is not one."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise MusicsteerError(f"cannot read session log {path}: {err.strerror or err}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # a session killed mid-write leaves a torn last line: the rest is good
            raise MusicsteerError(f"{path} line {number}: not JSON") from None
    if not records or records[0][1].get("format") != FORMAT:
        raise MusicsteerError(f"{path} is not a musicsteer session log (expected format {FORMAT})")
    session = LoggedSession(records[0][1])
    for number, record in records[1:]:
        if "end" in record:
            session.end = record["end"]
            continue
        if "meter" in record:
            continue
        try:
            change = Change(record["param"], record["value"], float(record.get("seconds", 0.0)))
            session.changes.append((int(record["step"]), change))
        except (KeyError, TypeError, ValueError):
            raise MusicsteerError(f"{path} line {number}: not a change record") from None
    return session
