"""A labelled audio collection, and its cut into fixed-length segments.

Two ways to name the data: a folder with one sub-folder per label (every file below a label folder
counts, recursively), or a CSV manifest with the columns `path,label` (paths relative to the CSV).
Files that cannot be read as audio, and CSV rows whose file is missing, are skipped and listed,
never fatal: one bad file in a thousand should not cost a night of extraction. What cannot give a
probe anything (no readable audio, a single label, a CSV without the columns) is a one-line
`MusicsteerError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicsteer.engine.audio_io import read_audio
from musicsteer.engine.errors import MusicsteerError, one_line, shown


@dataclass(frozen=True)
class Source:
    file_id: str  # path relative to the data root: stable when the collection is moved
    path: Path
    label: str


@dataclass(frozen=True)
class Segment:
    index: int  # row in the activation arrays
    file_id: str
    label: str
    start: int  # first sample, at the model's rate
    length: int  # samples (the last segment of a file may be shorter, down to half a segment)


@dataclass
class Plan:
    """What an extraction covers: the segments in row order and the files it had to skip."""

    segments: list[Segment]
    sources: dict[str, Source]  # file_id -> source, only files that contribute segments
    skipped: list[dict[str, str]]  # {"file": id, "reason": one line}

    @property
    def labels(self) -> list[str]:
        return sorted({s.label for s in self.segments})


def discover(data: str | Path) -> tuple[list[Source], list[dict[str, str]]]:
    """The labelled files of a folder or CSV manifest, in a stable order, and the rows skipped."""
    root = Path(data).expanduser()
    try:
        if not root.exists():
            raise MusicsteerError(f"data not found: {shown(str(root))}")
        folder = root.is_dir()
    except OSError as e:  # a name too long for the file system, a folder we may not enter
        raise MusicsteerError(f"cannot use --data {shown(str(root))}: {e.strerror or e}") from None
    if folder:
        return _from_folder(root), []
    if root.suffix.lower() == ".csv":
        return _from_csv(root)
    raise MusicsteerError(f"--data must be a folder (one sub-folder per label) or a .csv manifest, got "
                          f"{shown(str(root))}")


def _from_folder(root: Path) -> list[Source]:
    sources = []
    # Loose files at the top have no label (often a README): they are ignored, not errors.
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
            if path.is_file() and not hidden:
                sources.append(Source(path.relative_to(root).as_posix(), path, folder.name))
    if not sources:
        raise MusicsteerError(f"no audio files in {root}: expected one sub-folder of audio files per label")
    return sources


def _from_csv(manifest: Path) -> tuple[list[Source], list[dict[str, str]]]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            if not {"path", "label"} <= set(columns):
                raise MusicsteerError(f"{manifest} needs a header with the columns path,label (found {columns})")
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MusicsteerError(f"cannot read {manifest}: {one_line(e)}") from None
    sources, skipped, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        file_id, label = row.get("path", ""), row.get("label", "")
        path = (manifest.parent / file_id).expanduser()
        if not file_id or not label:
            skipped.append({"file": file_id or f"line {line}", "reason": f"line {line}: empty path or label"})
        elif not path.is_file():
            skipped.append({"file": file_id, "reason": f"line {line}: file not found"})
        elif file_id in seen:
            skipped.append({"file": file_id, "reason": f"line {line}: listed twice"})
        else:
            seen.add(file_id)
            sources.append(Source(file_id, path, label))
    if not sources:
        raise MusicsteerError(f"{manifest} lists no existing audio files")
    return sources, skipped


def segment_bounds(samples: int, segment: int) -> list[tuple[int, int]]:
    """(start, length) of each segment; a last piece shorter than half a segment is dropped."""
    bounds = [(start, min(segment, samples - start)) for start in range(0, samples, segment)]
    return [(start, length) for start, length in bounds if 2 * length >= segment]


def check_labels(labels: set[str] | list[str], where: str | Path) -> None:
    if len(set(labels)) < 2:
        only = f" ({next(iter(labels))!r})" if labels else ""
        raise MusicsteerError(f"{where} has only one label with audio{only}; a probe needs at least two")


def plan(data: str | Path, sources: list[Source], skipped: list[dict[str, str]], sample_rate: int, channels: int,
         segment_seconds: float) -> Plan:
    """Read every file once (to know its length after resampling, and to find the unreadable
    ones before any model time is spent) and cut it into segments."""
    seg = round(segment_seconds * sample_rate)
    segments: list[Segment] = []
    used: dict[str, Source] = {}
    skipped = list(skipped)
    for source in sources:
        try:
            samples = read_audio(source.path, sample_rate, channels).shape[1]
        except MusicsteerError as e:
            skipped.append({"file": source.file_id, "reason": str(e)})
            continue
        bounds = segment_bounds(samples, seg)
        if not bounds:
            skipped.append({"file": source.file_id, "reason": f"shorter than half a segment ({samples} samples)"})
            continue
        used[source.file_id] = source
        for start, length in bounds:
            segments.append(Segment(len(segments), source.file_id, source.label, start, length))
    if not segments:
        raise MusicsteerError(f"no readable audio in {data} ({len(skipped)} file(s) skipped)")
    result = Plan(segments, used, skipped)
    check_labels(result.labels, data)
    return result


def fingerprint(segments: list[Segment], settings: dict[str, object]) -> str:
    """Hash of what the activations were made from: file ids, labels, segment bounds, settings."""
    payload = json.dumps({"segments": [[s.file_id, s.label, s.start, s.length] for s in segments],
                          "settings": settings}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


class AudioReader:
    """Segment audio on demand, keeping the last file decoded: a file's segments are consecutive."""

    def __init__(self, sources: dict[str, Source], sample_rate: int, channels: int) -> None:
        self.sources, self.sample_rate, self.channels = sources, sample_rate, channels
        self._file: str | None = None
        self._audio: np.ndarray | None = None

    def segment(self, seg: Segment) -> np.ndarray:
        if seg.file_id != self._file:
            self._audio = read_audio(self.sources[seg.file_id].path, self.sample_rate, self.channels)
            self._file = seg.file_id
        piece = self._audio[:, seg.start : seg.start + seg.length]
        if piece.shape[1] != seg.length:
            raise MusicsteerError(f"{seg.file_id} changed since the extraction began (now shorter); "
                                  "use another --out")
        return piece
