"""The session log: `take.jsonl` beside every recording `take.wav`, enough to regenerate its codes.

Line 1 is a header (model, its dtype, seed, prompt, every starting control value of the session, the vectors
file and its sha256, the window settings, the engine version, and `take`: where this recording
starts in the session, `{"start_step": F0, "start_sample": S0}`). Then one line per applied change:
`{"step": token, "sample": index, "param": ..., "value": ..., "seconds": glide}`, with positions
counted in this take: `step` is the engine's token clock minus F0 (the change took effect before
that token was generated), `sample` is where that token's frame starts in this take's WAV. A take
started mid-session carries the changes made before it too, at negative positions, because the
music it holds depends on them: back to the session's start before the first window slide; after
one, only back to the last slide before the take, whose state the header's `resume` holds
(engine/checkpoint.py; format 3), so a log never holds more than a window's history.
Meter readings (`meter`) and notices (`notice`: a recorder error, a
warning) describe and are skipped by replay. A last line `{"end": {...}}` closes a take that ended
normally; a killed session simply lacks it. `render --replay` reads it back (`read_log`).

Lines are written by a writer thread: the generation thread only enqueues (no disk I/O there), and
every line is flushed as it is written, so a crash loses at most the line in flight.
Format 1 (musicsteer < 0.4) counted positions from the session's start and is still read, as is
format 2 (a take carried every change of the session before it). Every text in a log is judged by
params.check_text (or its row of the table): a lone surrogate is one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Malformed, MusicsteerError, TooLarge, one_line, shown
from .events import Change, validate_change
from .params import LIVE, NAME_CHARS, PARAMS, check_text

FORMAT = "musicsteer.session/3"
# format 1: one log per session, positions from its start; 2: one per take, every change of the session
# before it; 3: a take after a window slide resumes from its checkpoint (`resume`), the changes since.
READS = ("musicsteer.session/1", "musicsteer.session/2", FORMAT)
MAX_FRAMES = int(PARAMS["seconds"].high * 50) * 2  # steps or frames of the longest session, with room for the prompt
MAX_SAMPLES = MAX_FRAMES * 48000 // 50  # samples of as many frames at the highest rate a MusicGen decodes
# A replayed log is read whole: bound it. 256 MiB holds ~3 million changes (an hour of OSC at 800 a
# second); one token takes at most INBOX changes live (engine/control.py), so a log never needs more.
MAX_LOG_BYTES = 256 << 20
TEXT_CHARS = 4096  # the longest text a header field or a notice holds (a path, a model id, a message)
# Header texts besides the model's (None allowed): judged by params.check_text like every text that enters.
OPTIONAL_TEXT = ("model_fingerprint", "dtype", "engine_version", "created", "vectors", "vectors_sha256")
MAX_CHANGES_PER_STEP = 4096  # = control.INBOX (not imported: this module stays free of torch)
_STOP = object()

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


def log_path_for(recording: str | Path) -> Path:
    """`take.wav` -> `take.jsonl`."""
    return Path(recording).with_suffix(".jsonl")


class SessionLog:
    """One take's log. Opened (and so checked) at once; `header` may come later, before any record:
    a take's start is only known when the decode thread hands it its first frame."""

    def __init__(self, path: str | Path, header: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("w", encoding="utf-8")
        except OSError as err:
            raise MusicsteerError(f"cannot write session log {self.path}: {err.strerror or err}") from None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="musicsteer-session-log", daemon=True)
        self._thread.start()
        self.lines = 0
        self.error: str | None = None  # the first write error (a full disk): the log stops, the music does not
        self.on_error: Callable[[str], None] | None = None  # told once, from the writer thread, at that error
        if header is not None:
            self.header(header)

    def header(self, header: dict[str, Any]) -> None:
        """Enqueue the first line."""
        self._queue.put({"format": FORMAT, **header})

    def record(self, step: int, sample: int, change: Change) -> None:
        """Enqueue one applied change (any thread; never blocks on disk)."""
        self._queue.put({"step": step, "sample": sample, "param": change.param, "value": change.value,
                         "seconds": change.seconds})

    def record_meter(self, step: int, sample: int, scores: dict[str, float]) -> None:
        """A genre-meter reading (read_log skips these: they describe, they do not change anything)."""
        self._queue.put({"step": step, "sample": sample, "meter": scores})

    def record_notice(self, step: int, sample: int, level: str, text: str) -> None:
        """A notice (read_log skips these too)."""
        self._queue.put({"step": step, "sample": sample, "notice": level, "text": text})

    def close(self, end: dict[str, Any] | None = None) -> Path:
        if end is not None:
            self._queue.put({"end": end})
        self._queue.put(_STOP)
        self._thread.join()
        try:
            self._file.close()
        except OSError as err:  # the last buffered bytes met a full disk
            self.error = self.error or f"session log {self.path} failed: {one_line(err.strerror or err)}"
        return self.path

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if self.error is not None:
                continue  # after a failed write the file keeps its whole lines; the rest is dropped
            try:
                self._file.write(json.dumps(item, default=_record) + "\n")
                self._file.flush()
            except (OSError, ValueError) as err:
                self.error = f"session log {self.path} failed: {one_line(getattr(err, 'strerror', None) or err)}"
                if self.on_error is not None:
                    with contextlib.suppress(Exception):  # a broken listener must not end the writer
                        self.on_error(self.error)
                continue
            self.lines += 1


def _record(value: Any) -> Any:
    """JSON for what the header carries besides plain values: a checkpoint (engine/checkpoint.py),
    serialised here on the writer thread, never on the thread that started the take."""
    if hasattr(value, "record"):
        return value.record()
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass
class LoggedSession:
    """A read log. `changes` are at session steps (the take's positions + `start_step`), ready to
    schedule; `start_step` is the session frame the take's WAV starts at (0: the session's start)."""

    header: dict[str, Any]
    changes: list[tuple[int, Change]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    start_step: int = 0
    resume: Checkpoint | None = None  # the window slide the take resumes from (None: the session's start)


def read_log(path: str | Path) -> LoggedSession:
    """Parse a session log; MusicsteerError (one line, with the line number) if it is not one."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            raise MusicsteerError(f"session log {path} is {path.stat().st_size:,} bytes; the most replay reads is "
                                  f"{MAX_LOG_BYTES:,}")
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MusicsteerError(f"cannot read session log {path}: {one_line(getattr(err, 'strerror', None) or err)}") \
            from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, [[[[… nested too deep
            if number == len(lines):
                break  # a session killed mid-write leaves a torn last line: the rest is good
            raise MusicsteerError(f"{path} line {number}: not JSON") from None
    if not records or not isinstance(records[0][1], dict) or records[0][1].get("format") not in READS:
        raise MusicsteerError(f"{path} is not a musicsteer session log (expected format {FORMAT})")
    try:
        header = _header(records[0][1])
    except MusicsteerError as err:
        raise type(err)(f"{path} line 1: {err}") from None
    start = header["take"]["start_step"]
    session = LoggedSession(header, start_step=start)
    if "resume" in header:
        from .checkpoint import Checkpoint  # (torch: only for a log that needs it)

        try:
            session.resume = Checkpoint.from_record(header["resume"], _controls, _value, MAX_FRAMES)
        except MusicsteerError as err:
            raise type(err)(f"{path} line 1: {err}") from None
    # Changes apply after the state the log starts from: a resumed take's after its checkpoint's token.
    first_step = session.resume.step + 1 if session.resume is not None else 0
    rate, frames = header.get("sample_rate"), header.get("frame_rate")  # (older logs may not say)
    hop = rate // frames if isinstance(rate, int) and isinstance(frames, int) and frames > 0 else 0
    for number, record in records[1:]:
        try:
            if not isinstance(record, dict):
                raise Malformed("not a record")
            for key in (*record, *(record["end"] if isinstance(record.get("end"), dict) else ())):
                check_text("a record's key", key, NAME_CHARS)
            if "end" in record:
                end = record["end"]
                if session.end is not None:
                    raise Malformed("a log has one end record")
                if not isinstance(end, dict):
                    raise Malformed("the end record needs {'frames': N}")
                if not isinstance(end.get("padded", False), bool):
                    raise Malformed("the end record's padded must be true or false")
                session.end = {**end, "frames": _count(end.get("frames"), "frames"),
                               "steps": _count(end.get("steps", 0), "steps")}
                continue
            if "meter" in record or "notice" in record:
                _described(record)  # replay skips them, but a log's every text obeys the one rule
                continue
            # Held to the start-up rules of every other path: a hand-edited NaN or 1e308 is refused here.
            change = Change(record.get("param"), record.get("value"), record.get("seconds", 0.0))
            step = _count(record.get("step"), "step", low=first_step - start) + start  # the session's step
            if hop and "sample" in record and record["sample"] != (step - start) * hop:
                raise Malformed(f"a change's sample must be its step × {hop} (the frame's first sample), got "
                                f"{shown(record['sample'])} at step {step - start}")
            if session.end is not None or (session.changes and step < session.changes[-1][0]):
                raise Malformed("changes come in step order, before the end record")
            if len(session.changes) >= MAX_CHANGES_PER_STEP and session.changes[-MAX_CHANGES_PER_STEP][0] == step:
                raise TooLarge(f"more than {MAX_CHANGES_PER_STEP} changes at step {step}: a live session "
                               "applies at most that many per token")
            session.changes.append((step, validate_change(change, live=False)))
        except MusicsteerError as err:
            raise type(err)(f"{path} line {number}: {err}") from None
    held = session.end["frames"] + (session.header.get("prompt_frames", 0) if start == 0 else 0) if session.end else 1
    if held < 1:
        raise Malformed(f"{path}: the end record holds no audio (0 frames)")
    return session


def _header(header: dict[str, Any]) -> dict[str, Any]:
    """The header's fields replay reads, checked for type (values: by the table, when applied)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise Malformed(f"the header's {what}")
    need(isinstance(header.get("model"), str), "model must be text")
    need(isinstance(header.get("controls"), dict) and isinstance(header.get("settings"), dict),
         "controls and settings must be mappings")
    # Every text of the header by the one rule for text (valid Unicode, bounded, no control characters):
    # a log is a start-up path like a flag, and its texts reach file names, messages and the loader.
    for key in header:
        check_text("a key", key, NAME_CHARS)
    for key in ("model", *OPTIONAL_TEXT):
        if header.get(key) is not None:
            check_text(f"the header's {key}", header[key], TEXT_CHARS)
    for key in header["settings"]:
        check_text("a setting's name", key, NAME_CHARS)
    settings = dict(header["settings"])
    if "alpha_slew_seconds" in settings:  # the slew's name in older logs: one name now
        settings.setdefault("slew", settings.pop("alpha_slew_seconds"))
    prompt_frames = _count(header.get("prompt_frames", 0), "prompt_frames")
    init = header.get("init_audio")
    need(init is None or isinstance(init, dict) and isinstance(init.get("path"), str)
         and isinstance(init.get("sha256"), str), "init_audio needs a path and a sha256")
    if init is not None:
        check_text("the init audio's path", init["path"], TEXT_CHARS)
        check_text("the init audio's sha256", init["sha256"], TEXT_CHARS)
    need(init is not None or prompt_frames == 0, "prompt_frames needs the init_audio they came from")
    take = header.get("take", {"start_step": 0, "start_sample": 0})  # format 1: the session's start
    need(isinstance(take, dict), "take must be a mapping")
    take = {"start_step": _count(take.get("start_step"), "the take's start_step"),
            "start_sample": _count(take.get("start_sample"), "the take's start_sample", high=MAX_SAMPLES)}
    rates = header.get("sample_rate"), header.get("frame_rate")
    for rate, (what, low, high) in zip(rates, (("sample_rate", 8000, 192000), ("frame_rate", 1, 1000)), strict=True):
        need(rate is None or isinstance(rate, int) and not isinstance(rate, bool) and low <= rate <= high,
             f"{what} must be a whole number from {low} to {high}, got {shown(rate, 24)}")
    if None not in rates:  # a take starts at a frame
        need(take["start_sample"] == take["start_step"] * (rates[0] // rates[1]), "take's start_sample must be "
             "its start_step frames of samples")
    if init is not None:
        PARAMS["init_seconds"].check(init.get("seconds", PARAMS["init_seconds"].default))
    controls = _controls(header["controls"])
    for key in ("seed", "prompt"):  # the header repeats these two of the controls: the copies must agree
        need(key not in header or key not in controls or header[key] == controls[key],
             f"{key} must equal controls' {key}, got {shown(header.get(key), 30)}")
    return {**header, "controls": controls, "take": take, "settings": settings}


def _controls(mapping: Any) -> dict[str, Any]:
    """Controls by status key, held to the start-up rules, in Controls' types (mix {}, layers [], site "":
    the vectors file's). Malformed/typed MusicsteerError, one line."""
    if not isinstance(mapping, dict):
        raise Malformed("the controls must be a mapping")
    fields = {row.status: row for row in LIVE.values()}
    controls = {}
    for key, value in mapping.items():
        row = fields.get(key)
        if row is None:
            raise Malformed(f"the header's controls name an unknown control {shown(key, 30)}")
        if value in ({}, [], "") and row.kind != "text":
            controls[key] = () if row.many else value
            continue
        checked = row.named(key).check(value)[0]
        controls[key] = (checked,) if row.many and not isinstance(checked, tuple) else checked
    return controls


def _value(param: str, value: Any) -> Any:
    """One value of a live row (a glide's ends), held to the start-up rules."""
    return LIVE[param].check(value)[0]


def _described(record: dict[str, Any]) -> None:
    """A meter reading's labels and a notice's level and text: valid text (MusicsteerError if not)."""
    if "meter" in record:
        if not isinstance(record["meter"], dict):
            raise Malformed("a meter reading needs {label: score}")
        for label in record["meter"]:
            check_text("a meter label", label, NAME_CHARS)
    else:
        check_text("a notice's level", record["notice"], NAME_CHARS)
        check_text("a notice's text", record.get("text"), TEXT_CHARS)


def _count(value: object, what: str, low: int = 0, high: int = MAX_FRAMES) -> int:
    """A step, frame or sample count: a whole number from `low` to a day of frames (params.SETTINGS seconds)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Malformed(f"{what} must be a whole number from {low} to {high}, got {shown(value, 24)}")
    return value
