"""Live take requests (record start/stop from OSC or the page), run one at a time on the takes thread.

File I/O never runs on the thread serving the controls, and nothing a peer sends holds what the performer
needs (issue 28): each source (the sender's host) keeps at most one start waiting, a newer start from it
replacing the waiting one; past `MAX_PENDING` sources the oldest waiting start gives way; a stop is never
refused for want of room (stops are at most one more than the starts waiting: one after the last start is
joined by a later stop, which gets the same answer). What gave way is answered, never dropped silently.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MusicsteerError, one_line

MAX_PENDING = 4  # sources with a start waiting for the takes thread
KINDS = ("start", "stop")
SUPERSEDED = "superseded: a newer take request came before this one was run"

Done = Callable[[Path | None, str | None], None]


@dataclass
class _Request:
    kind: str
    source: Hashable
    action: Callable[[], Path | None]
    answers: list[Done] = field(default_factory=list)


class TakeRequests:
    """A bounded queue of take requests and the one thread that runs them in order."""

    def __init__(self) -> None:
        self._queue: collections.deque[_Request] = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def put(self, kind: str, source: Hashable, action: Callable[[], Path | None], done: Done) -> None:
        """Run `action` later; then `done(path, None)` or `done(None, error line)`. `kind` is "start" or
        "stop" (ValueError otherwise); `source` identifies the sender (its host; None: a caller of its own,
        never replaced by another)."""
        if kind not in KINDS:
            raise ValueError(f"take request kind {kind!r} is not one of {KINDS}")
        gave_way: _Request | None = None
        with self._ready:
            if self._closing:
                refused = "the session is ending"
            else:
                refused = None
                last = self._queue[-1] if self._queue else None
                if kind == "stop" and last is not None and last.kind == "stop":
                    last.answers.append(done)  # the same stop, asked twice: one answer for both
                else:
                    if kind == "start":
                        starts = [r for r in self._queue if r.kind == "start"]
                        gave_way = next((r for r in starts if source is not None and r.source == source), None)
                        if gave_way is None and len(starts) >= MAX_PENDING:
                            gave_way = starts[0]
                        if gave_way is not None:
                            self._queue.remove(gave_way)
                    self._queue.append(_Request(kind, source, action, [done]))
                    self._ready.notify()
                    if self._thread is None:
                        self._thread = threading.Thread(target=self._run, name="musicsteer-takes", daemon=True)
                        self._thread.start()
        if refused is not None:
            done(None, refused)
        for answer in gave_way.answers if gave_way is not None else ():
            answer(None, SUPERSEDED)

    def close(self) -> None:
        """Run what waits, then end the thread (at the session's end)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._ready:  # a session's takes may be asked for again (a library caller): a new thread then
            self._closing, self._thread = False, None

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                request = self._queue.popleft()
            result, error = None, None
            try:
                result = request.action()
            except MusicsteerError as err:
                error = str(err)
            except Exception as err:  # noqa: BLE001 - a request must always be answered, whatever failed
                error = f"{type(err).__name__}: {one_line(err)}"
            for answer in request.answers:
                answer(result, error)
