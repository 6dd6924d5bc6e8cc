"""The exceptions a user can cause, typed by kind, and the one helper that makes a message one line.

Everything a performer or researcher can get wrong (a missing file, an unknown vector name, a
vectors file made for another model, a bad YAML key, a value out of range) raises `MusicsteerError`
or one of its kinds below, with a message that stands on one line. The CLI prints it as
`musicsteer: error: <message>` and exits 2; a live session reports it to its sender and counts it
by `kind` (status, summary). Nobody matches the English of a message: the class says what it is.
"""

from __future__ import annotations

import reprlib


class MusicsteerError(Exception):
    """A failure caused by the user's input, reported as one clear line."""

    kind = "invalid"  # the refusal counter's key (docs/design.md, "Refusals")
    counted = False  # set once the refusal is counted (ControlState.submit): a controller must not count it again


class BadType(MusicsteerError):
    """A value of the wrong type: text for a number, a fraction for a whole number, an OSC colour."""

    kind = "bad_type"


class NonFinite(MusicsteerError):
    """NaN or ±inf where a number is needed."""

    kind = "non_finite"


class OutOfRange(MusicsteerError):
    """A number outside its parameter's range (refused at start; live, values are clamped instead)."""

    kind = "out_of_range"


class TooLarge(MusicsteerError):
    """A size past its documented maximum: a prompt's length, a mix's entries, a file, a YAML tree."""

    kind = "too_large"


class UnknownName(MusicsteerError):
    """A name nothing here knows: a vector label, a parameter, an OSC address, a preset."""

    kind = "unknown_name"


class Busy(MusicsteerError):
    """The control queue is full: a flood of changes is refused rather than stalling the session."""

    kind = "busy"


class Unreadable(MusicsteerError):
    """An input file (or dataset row) that gives no audio: missing, not audio, undecodable, empty, NaN. The
    file's own fault: a collection skips and lists it (probes/dataset.py, probes/pipeline.py); any other
    error met on the way is not the file's, and is not counted as its."""

    kind = "unreadable"


class Malformed(MusicsteerError):
    """A packet or file that does not parse (an OSC datagram, a session-log line)."""

    kind = "malformed"


# C0, DEL and C1 controls, and Unicode's bidirectional controls (U+061C, U+200E/F, U+202A-E, U+2066-9): a
# right-to-left override in a hostile take name shows it reversed on the terminal, so it is escaped too.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ALL_CONTROLS = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
                 for code in (*range(32), *range(127, 160), *_BIDI)}
_CONTROLS = {code: escape for code, escape in _ALL_CONTROLS.items() if chr(code) not in " \t\n\r\x0b\x0c"}
# reprlib bounds the work as well as the length: a YAML alias bomb or a 60 KB blob is never expanded.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 2, 48, 40, 48
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4


def shown(value: object, limit: int = 60) -> str:
    """A bounded, one-line rendering of a user's value for an error message (never a full repr)."""
    return one_line(_REPR.repr(value), limit)


def printable(text: object) -> str:
    """Text for the terminal as it is, but with every control character (a newline, an ANSI escape in
    a hostile file name) shown as an escape: for lines that name a path, where spaces must survive."""
    return _escape_surrogates(str(text).translate(_ALL_CONTROLS))


def _escape_surrogates(text: str) -> str:
    """A lone surrogate (a non-UTF-8 byte of a file name, surrogate-escaped) as `\\udce9`: a message
    naming it must print on any stream, a strict UTF-8 one too."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: object, limit: int = 300) -> str:
    """Any message or exception as one line of at most `limit` characters: whitespace collapsed, and any
    other control character (an ANSI escape in a hostile file name) shown as an escape, not sent raw."""
    line = _escape_surrogates(" ".join(str(text).split()).translate(_CONTROLS))
    if not line and isinstance(text, BaseException):
        line = type(text).__name__  # e.g. a bare KeyError()
    return line if len(line) <= limit else line[: limit - 1] + "…"
