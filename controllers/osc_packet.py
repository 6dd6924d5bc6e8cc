"""Strict OSC 1.0 packet reading: a datagram -> its messages, or one `Malformed` error.

python-osc decodes the values, but it is lenient where a live session cannot be: it pads short
floats (a truncated `alpha 0.5` would apply 0.0), skips unknown type tags without consuming their
bytes, accepts a bundle element whose size runs past the packet, and logs one WARNING per element it
cannot identify (50 crafted packets once wrote 750,000 lines to stderr). So every byte is accounted
for here first, bare messages and every element of every bundle alike: NUL-terminated strings padded
with NULs to 4 bytes, known type tags, element sizes that fit exactly, bounded nesting and element
counts. Only then does python-osc decode the values, and it has nothing left to warn about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message import OscMessage

from musicsteer.engine.errors import Malformed

BUNDLE = b"#bundle\0"
MAX_MESSAGES = 256  # per datagram: a control surface's bundle is a handful; more is a flood
MAX_DEPTH = 4  # bundles within bundles
# Bytes per fixed-size type tag. Tags python-osc cannot decode (c, S, I, …) are refused, not skipped.
_FIXED = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8, "T": 0, "F": 0, "N": 0, "[": 0, "]": 0}


@dataclass(frozen=True)
class Message:
    """One OSC message: its address, its type tags (without the comma) and the decoded arguments."""

    address: str
    tags: str
    args: tuple[Any, ...]


def parse_packet(data: bytes) -> list[Message]:
    """Every message of a datagram (a message, or a bundle's elements in order), or Malformed."""
    spans: list[tuple[int, int, str]] = []
    _walk(data, 0, len(data), 0, spans)
    out = []
    for start, end, tags in spans:
        try:
            message = OscMessage(data[start:end])
        except Exception as exc:  # noqa: BLE001 - a string that is not UTF-8, a bad array nesting
            raise Malformed(f"undecodable message: {str(exc)[:60] or type(exc).__name__}") from None
        out.append(Message(message.address, tags, tuple(message.params)))
    return out


def _walk(data: bytes, start: int, end: int, depth: int, spans: list[tuple[int, int, str]]) -> None:
    if data.startswith(BUNDLE, start):
        if depth >= MAX_DEPTH:
            raise Malformed(f"bundles nested more than {MAX_DEPTH} deep")
        pos = start + len(BUNDLE) + 8  # the time tag (ignored: a wait would stall the only serving thread)
        if pos > end:
            raise Malformed("truncated bundle header")
        while pos < end:
            if pos + 4 > end:
                raise Malformed("truncated bundle element size")
            size = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            pos += 4
            if size <= 0 or size % 4 or pos + size > end:
                raise Malformed(f"bundle element size {size} does not fit the packet")
            _walk(data, pos, pos + size, depth + 1, spans)
            pos += size
        return
    tags = _check_message(data, start, end)
    if len(spans) >= MAX_MESSAGES:
        raise Malformed(f"more than {MAX_MESSAGES} messages in one packet")
    spans.append((start, end, tags))


def _string_end(data: bytes, pos: int, end: int) -> int:
    """The end of the padded OSC string at `pos`: NUL-terminated, then NULs to a multiple of 4."""
    nul = data.find(b"\0", pos, end)
    if nul < 0:
        raise Malformed("unterminated string")
    padded = nul + 4 - (nul - pos) % 4
    if padded > end or data[nul:padded].strip(b"\0"):
        raise Malformed("string padding is not NUL bytes" if padded <= end else "truncated string")
    return padded


def _check_message(data: bytes, start: int, end: int) -> str:
    """Check one message's bytes exactly; return its type tags."""
    if (end - start) % 4 or data[start : start + 1] != b"/":
        raise Malformed("not an OSC message, or its size is not a multiple of 4")
    pos = _string_end(data, start, end)
    if pos == end:  # OSC 1.0: a message without type tags has no arguments
        return ""
    if data[pos : pos + 1] != b",":
        raise Malformed("type tags must start with ','")
    tag_end = _string_end(data, pos, end)
    tags = data[pos + 1 : data.index(b"\0", pos)].decode("latin-1")
    pos = tag_end
    for tag in tags:
        if tag in _FIXED:
            pos += _FIXED[tag]
        elif tag == "s":
            pos = _string_end(data, pos, end)
        elif tag == "b" and pos + 4 <= end:
            size = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            if size < 0:
                raise Malformed("negative blob size")
            pos += 4 + size + (-size) % 4
        else:
            raise Malformed(f"unsupported type tag {tag!r}" if tag != "b" else "truncated blob")
        if pos > end:
            raise Malformed("arguments do not fill the packet")
    if pos != end:
        raise Malformed("bytes after the arguments")
    return tags
