"""A labelled audio collection, and its cut into fixed-length segments.

Three ways to name the data: a folder with one sub-folder per label (every file below a label folder
counts, recursively), a CSV manifest with the columns `path,label` (paths relative to the CSV), or a
Hugging Face audio dataset saved with `save_to_disk`, `hf:PATH[:SPLIT]` (probes/hf_data.py).
The plan reads only each file's header (soundfile's info): engine/audio_io.audio_length predicts the
exact length read_audio returns, so segments are cut without decoding anything. A file whose header
reads but whose data does not decode is found during extraction instead (probes/extract.py).
Files that cannot be read as audio, and CSV rows whose file is missing, are skipped and listed,
never fatal: one bad file in a thousand should not cost a night of extraction. What cannot give a
probe anything (no readable audio, a single label, a CSV without the columns) is a one-line
`MusicsteerError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from musicsteer.engine.audio_io import audio_length
from musicsteer.engine.errors import MusicsteerError, Unreadable, one_line, shown
from musicsteer.engine.vectors import check_label

from . import hf_data


@dataclass(frozen=True)
class Source:
    file_id: str  # path relative to the data root (a dataset row: SPLIT/ROW[/NAME]): stable when moved
    path: Path  # the audio file; for a dataset row, the dataset's folder
    label: str
    row: int | None = None  # a dataset row: its index in `split`
    split: str | None = None

    def encoded(self) -> Path | bytes:
        """The file to decode: its path, or a dataset row's encoded bytes (or the file it names)."""
        return self.path if self.row is None else hf_data.row_audio(self.path, self.split, self.row)


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


def discover(data: str | Path, label_column: str | None = None) -> tuple[list[Source], list[dict[str, str]]]:
    """The labelled files of a folder, CSV manifest or `hf:` dataset, in a stable order, and the rows
    skipped. `label_column` names a dataset's label column (only with `hf:`)."""
    if str(data).startswith(hf_data.PREFIX):
        folder, split = hf_data.parse(str(data))
        split, found = hf_data.rows(folder, split, label_column)
        return _named([Source(file_id, folder, label, index, split) for file_id, index, label in found]), []
    if label_column is not None:
        raise MusicsteerError("--label-column chooses a dataset's column; it needs --data hf:PATH")
    root = Path(data).expanduser()
    try:
        if not root.exists():
            raise MusicsteerError(f"data not found: {shown(str(root))}")
        folder = root.is_dir()
    except OSError as e:  # a name too long for the file system, a folder we may not enter
        raise MusicsteerError(f"cannot use --data {shown(str(root))}: {e.strerror or e}") from None
    if folder:
        return _named(_from_folder(root)), []
    if root.suffix.lower() == ".csv":
        sources, skipped = _from_csv(root)
        return _named(sources), skipped
    raise MusicsteerError(f"--data must be a folder (one sub-folder per label) or a .csv manifest, got "
                          f"{shown(str(root))}")


def _named(sources: list[Source]) -> list[Source]:
    """`sources`, once every label is one a vector may be named (engine/vectors.check_label: at most
    NAME_CHARS characters, valid Unicode, selectable from every surface); else one line naming the first
    file of the first bad label, before any audio is read: a label is a vector's name in the file written."""
    seen: set[str] = set()
    for source in sources:
        if source.label not in seen:
            seen.add(source.label)
            try:
                check_label(source.label, "a label")
            except MusicsteerError as e:
                raise type(e)(f"{e} (the label of {shown(source.file_id)}); rename it: it becomes a vector's "
                              "name") from None
    return sources


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
    sources, skipped, seen = [], [], {}  # seen: each file (resolved: `a/x.wav`, `./a/x.wav` are one) -> its line
    for line, row in enumerate(rows, start=2):
        file_id, label = row.get("path", ""), row.get("label", "")
        path = (manifest.parent / file_id).expanduser()
        if not file_id or not label:
            skipped.append({"file": file_id or f"line {line}", "reason": f"line {line}: empty path or label"})
        elif not path.is_file():
            skipped.append({"file": file_id, "reason": f"line {line}: file not found"})
        elif (first := seen.setdefault(path.resolve(), line)) != line:
            skipped.append({"file": file_id, "reason": f"line {line}: listed twice (the file of line {first})"})
        else:
            sources.append(Source(file_id, path, label))
    if not sources:
        raise MusicsteerError(f"{manifest} lists no existing audio files")
    return sources, skipped


def segment_bounds(samples: int, segment: int) -> list[tuple[int, int]]:
    """(start, length) of each segment; a last piece shorter than half a segment is dropped."""
    bounds = [(start, min(segment, samples - start)) for start in range(0, samples, segment)]
    return [(start, length) for start, length in bounds if 2 * length >= segment]


def by_file(segments: Iterable[Segment]) -> dict[str, list[Segment]]:
    """Segments grouped by their file, files in first-met order (a file's segments are consecutive rows)."""
    files: dict[str, list[Segment]] = {}
    for seg in segments:
        files.setdefault(seg.file_id, []).append(seg)
    return files


def check_labels(labels: set[str] | list[str], where: str | Path) -> None:
    if len(set(labels)) < 2:
        only = f" ({next(iter(labels))!r})" if labels else ""
        raise MusicsteerError(f"{where} has only one label with audio{only}; a probe needs at least two")


def plan(data: str | Path, sources: list[Source], skipped: list[dict[str, str]], sample_rate: int,
         segment_seconds: float) -> Plan:
    """Read every file's header (its length after resampling, and the unreadable files before any model
    time is spent; no audio is decoded) and cut it into segments of `segment_seconds` at `sample_rate`.
    A file whose header does not read, is empty, or is shorter than half a segment is skipped and listed."""
    seg = round(segment_seconds * sample_rate)
    segments: list[Segment] = []
    used: dict[str, Source] = {}
    skipped = list(skipped)
    for source in sources:
        try:
            samples = audio_length(source.encoded(), sample_rate, source.file_id)
        except Unreadable as e:  # the file's own fault only: any other error is ours, or the whole input's
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
        first = f"; the first: {skipped[0]['reason']}" if skipped else ""
        raise MusicsteerError(f"no readable audio in {data} ({len(skipped)} file(s) skipped{first})")
    result = Plan(segments, used, skipped)
    check_labels(result.labels, data)
    return result


def fingerprint(segments: list[Segment], settings: dict[str, object]) -> str:
    """Hash of what the activations were made from: file ids, labels, segment bounds, settings."""
    payload = json.dumps({"segments": [[s.file_id, s.label, s.start, s.length] for s in segments],
                          "settings": settings}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]
