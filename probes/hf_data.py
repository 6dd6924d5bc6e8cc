"""Hugging Face `datasets` audio collections as probe input: `--data hf:PATH[:SPLIT]`.

PATH is what `save_to_disk` wrote: a DatasetDict, whose split SPLIT is used (SPLIT may be left out when
there is one split), or a single Dataset (what `Dataset.from_dict/from_list/from_pandas` make), which
takes no SPLIT unless it was loaded as one (`load_dataset(..., split="train")` remembers "train").
The audio column (`audio_column`) is the dataset's one `Audio` column, cast with decode or not; else
the one column holding encoded files by type (an uncast {bytes, path} column, or bytes); else the
column `audio` or `path` holding file paths (a CSV manifest's layout). The label column is
--label-column, else `label`, else the dataset's one `ClassLabel` column; a ClassLabel's names are
the labels, any other column's values are used as text.
The audio is never decoded by `datasets` (that needs torchcodec/ffmpeg): each row gives its encoded
file (`bytes`) or the file its `path` names, and soundfile decodes that like any other file
(engine/audio_io.decode_audio). A relative path is taken from the dataset's folder, else from the
working directory.

A row's file id is `NAME/ROW` (its index in the split), with `/FILE` added when the row names its
file; NAME is the split's name, or the Dataset's own (`data` when it has none): stable while the
saved dataset is unchanged, which is what the cache's resume needs; a dataset rewritten in another
order gives other ids, and the cache refuses it as other data.
Every refusal is about the whole dataset and is raised by `rows`, before any audio is read; the only
error `row_audio` raises is its row's own (no bytes, and no file where its path points), `Unreadable`,
which the extraction counts as that row's unreadable file.
`datasets` is an optional extra (`pip install musicsteer[datasets]`): missing, `hf:` is one line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from musicsteer.engine.errors import MusicsteerError, Unreadable, one_line, shown

PREFIX = "hf:"
PATH_COLUMNS = ("audio", "path")  # without an Audio or bytes column: the column of file paths, by name
_BYTES, _TEXT = ("binary", "large_binary"), ("string", "large_string")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MusicsteerError("--data hf:... needs the `datasets` library: "
                              "pip install 'musicsteer[datasets]'") from None
    return datasets


def parse(spec: str) -> tuple[Path, str | None]:
    """`hf:PATH[:SPLIT]` -> (PATH, SPLIT or None). A PATH that exists as written keeps its colons."""
    rest = spec[len(PREFIX):]
    path = Path(rest).expanduser()
    if path.exists() or ":" not in rest:
        return path, None
    folder, split = rest.rsplit(":", 1)
    return Path(folder).expanduser(), split or None


@lru_cache(maxsize=4)
def open_split(folder: Path, split: str | None) -> tuple[Any, str | None, str]:
    """(the split as a Dataset whose audio column is left encoded, the key that opens it again (the
    DatasetDict's split name; None for a single Dataset), its name in file ids). `split` is the user's
    SPLIT or a key this returned. Cached per process (a decoding worker opens it once; the arrow files
    are memory-mapped, not read)."""
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise MusicsteerError(f"cannot load dataset {shown(str(folder))}: {one_line(e)}") from None
    except IndexError:  # datasets' load_from_disk of a dataset saved with no rows (no data file): 4.x, 5.x
        raise MusicsteerError(f"dataset {shown(str(folder))} holds no rows (or a split of it none): "
                              "no audio to read") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None and len(names) != 1:
            raise MusicsteerError(f"{folder} has the splits {', '.join(names)}; name one: --data hf:{folder}:SPLIT")
        key = names[0] if split is None else split
        if key not in loaded:
            raise MusicsteerError(f"{folder} has no split {shown(key)} (splits: {', '.join(names)})")
        loaded, name = loaded[key], key
    else:
        key, name = None, str(loaded.split) if loaded.split else "data"
        if split is not None and (loaded.split is None or split != name):
            raise MusicsteerError(f"{folder} is a single dataset, not split into {shown(split)}: "
                                  f"give --data hf:{folder}")
    for column, feature in loaded.features.items():  # leave the audio encoded: soundfile decodes it
        if isinstance(feature, datasets.Audio) and feature.decode:
            loaded = loaded.cast_column(column, datasets.Audio(decode=False))
    return loaded, key, name


def audio_column(ds: Any) -> str:
    """The column that holds each row's encoded audio (the module's docstring says which)."""
    datasets = _datasets()
    features = ds.features
    for found in ([c for c, f in features.items() if isinstance(f, datasets.Audio)],
                  [c for c, f in features.items() if _kind(f) in ("struct", "bytes")]):
        if len(found) == 1:
            return found[0]
        if found:
            raise MusicsteerError(f"the dataset has several audio columns, {', '.join(found)}: keep one")
    for column in PATH_COLUMNS:
        if _kind(features.get(column)) == "path":
            return column
    raise MusicsteerError(f"cannot tell the audio column among {list(features)}: cast it to datasets.Audio, "
                          f"or name a column of file paths {' or '.join(PATH_COLUMNS)}")


def _kind(feature: Any) -> str | None:
    """How a column holds audio: "struct" ({bytes, path}: an Audio column, cast or not), "bytes", "path"."""
    datasets = _datasets()
    if isinstance(feature, datasets.Audio) or (isinstance(feature, dict) and feature
                                               and set(feature) <= {"bytes", "path"}):
        return "struct"
    if isinstance(feature, datasets.Value):
        return "bytes" if feature.dtype in _BYTES else "path" if feature.dtype in _TEXT else None
    return None


def label_column(ds: Any, chosen: str | None) -> str:
    datasets = _datasets()
    if chosen is not None:
        if chosen not in ds.features:
            raise MusicsteerError(f"--label-column {shown(chosen)} is not a column of the dataset "
                                  f"(columns: {', '.join(ds.features)})")
        return chosen
    if "label" in ds.features:
        return "label"
    found = [name for name, feature in ds.features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(found) != 1:
        raise MusicsteerError(f"cannot tell the label column among {list(ds.features)}: name it with --label-column")
    return found[0]


def rows(folder: Path, split: str | None, label: str | None = None) -> tuple[str | None, list[tuple[str, int, str]]]:
    """The key that opens the split again (row_audio's `split`) and (file id, row index, label) of its rows,
    in row order; rows without a label or audio are left out. Only the label column and the audio's
    `path` field are read, never the audio. Every refusal of the dataset is raised here."""
    ds, key, name = open_split(folder, split)
    ds, key, name = open_split(folder, key)  # the entry row_audio uses, filled (and checked) now
    audio, labels = audio_column(ds), label_column(ds, label)
    if audio == labels:
        raise MusicsteerError(f"the column {shown(audio)} cannot be both the audio and the label")
    feature = ds.features[labels]
    names = feature.names if isinstance(feature, _datasets().ClassLabel) else None
    table = ds.with_format("arrow").select_columns([audio, labels])[:]  # a pyarrow Table: no decoding
    cells = table.column(audio).combine_chunks()
    kind = _kind(ds.features[audio])
    if kind == "struct":
        fields = {field.name for field in cells.type}
        paths = cells.field("path").to_pylist() if "path" in fields else [None] * len(cells)
        data = cells.field("bytes").is_valid().to_pylist() if "bytes" in fields else [False] * len(cells)
        found = [valid and (has or bool(path)) for valid, has, path in zip(cells.is_valid().to_pylist(), data, paths,
                                                                           strict=True)]
    elif kind == "bytes":
        paths, found = [None] * len(cells), cells.is_valid().to_pylist()
    else:
        paths = cells.to_pylist()
        found = [bool(path and path.strip()) for path in paths]
    out = []
    for index, (value, path, present) in enumerate(zip(table.column(labels).to_pylist(), paths, found, strict=True)):
        if value is None or not present or (names is not None and not 0 <= value < len(names)):
            continue
        text = names[value] if names is not None else str(value).strip()
        if text:
            out.append((f"{name}/{index}" + (f"/{path}" if path else ""), index, text))
    if not out:
        raise MusicsteerError(f"{folder} has no labelled audio rows in {name}")
    return key, out


def row_audio(folder: Path, split: str | None, index: int) -> Path | bytes:
    """The encoded audio of row `index` of the split `rows` gave the key of: its bytes, or the file its path
    names. A row with neither is `Unreadable`: the row's own fault, the only one raised here."""
    ds, _, _ = open_split(folder, split)
    value = ds[index][audio_column(ds)]
    data, named = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else \
        (value, None) if isinstance(value, bytes) else (None, value)
    if data:
        return data
    path = _resolve(folder, named)
    if path is None:
        raise Unreadable(f"row {index} of {folder} holds no audio bytes and its file "
                              f"{shown(named)} is not found")
    return path


def _resolve(folder: Path, named: str | None) -> Path | None:
    """The file a row's path names: as given when absolute, else from the dataset's folder, else from the
    working directory; None when there is none."""
    if not named or not named.strip():
        return None
    path = Path(named).expanduser()
    for candidate in ([path] if path.is_absolute() else [folder / path, path]):
        if candidate.is_file():
            return candidate
    return None
