"""Hugging Face `datasets` audio collections as probe input: `--data hf:PATH[:SPLIT]`.

PATH is a dataset saved with `save_to_disk` (a Dataset, or a DatasetDict whose split SPLIT is used;
SPLIT may be left out when there is one split). The audio column is the dataset's one `Audio`
column; the label column is --label-column, else `label`, else the dataset's one `ClassLabel`
column; a ClassLabel's names are the labels, any other column's values are used as text.
The audio is never decoded by `datasets` (that needs torchcodec/ffmpeg): the column is read with
`Audio(decode=False)`, which gives each row's encoded file (`bytes`) or its `path`, and soundfile
decodes that like any other file (engine/audio_io.decode_audio).

A row's file id is `SPLIT/ROW` (its index in the split), with `/NAME` added when the row names its
file: stable while the saved dataset is unchanged, which is what the cache's resume needs; a
dataset rewritten in another order gives other ids, and the cache refuses it as other data.
`datasets` is an optional extra (`pip install musicsteer[datasets]`): missing, `hf:` is one line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from musicsteer.engine.errors import MusicsteerError, one_line, shown

PREFIX = "hf:"


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
def open_split(folder: Path, split: str | None) -> tuple[Any, str]:
    """The split as a Dataset whose audio column is left encoded, and the split's name. Cached per
    process (a decoding worker opens it once; the arrow files are memory-mapped, not read)."""
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise MusicsteerError(f"cannot load dataset {shown(str(folder))}: {one_line(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None and len(names) != 1:
            raise MusicsteerError(f"{folder} has the splits {', '.join(names)}; name one: --data hf:{folder}:SPLIT")
        split = names[0] if split is None else split
        if split not in loaded:
            raise MusicsteerError(f"{folder} has no split {shown(split)} (splits: {', '.join(names)})")
        loaded = loaded[split]
    elif split is not None and split != (str(loaded.split) if loaded.split else None):
        raise MusicsteerError(f"{folder} is a single dataset, not split; drop :{split}")
    for name, feature in loaded.features.items():  # leave the audio encoded: soundfile decodes it
        if isinstance(feature, datasets.Audio) and feature.decode:
            loaded = loaded.cast_column(name, datasets.Audio(decode=False))
    return loaded, split or str(loaded.split or "data")


def audio_column(ds: Any) -> str:
    datasets = _datasets()
    found = [name for name, feature in ds.features.items() if isinstance(feature, datasets.Audio)]
    if len(found) != 1:
        raise MusicsteerError(f"the dataset needs exactly one Audio column, found {found or 'none'} "
                              f"among {list(ds.features)}")
    return found[0]


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


def rows(folder: Path, split: str | None, label: str | None = None) -> tuple[str, list[tuple[str, int, str]]]:
    """The split's name and (file id, row index, label) of its rows, in row order; rows without a label
    or audio are left out. Only the label column and the audio's `path` field are read, never the audio."""
    ds, split_name = open_split(folder, split)
    audio, labels = audio_column(ds), label_column(ds, label)
    feature = ds.features[labels]
    names = feature.names if isinstance(feature, _datasets().ClassLabel) else None
    table = ds.with_format("arrow").select_columns([audio, labels])[:]  # a pyarrow Table: no decoding
    paths = table.column(audio).combine_chunks().field("path").to_pylist()
    found = table.column(audio).combine_chunks().is_valid().to_pylist()
    out = []
    for index, (value, name, present) in enumerate(zip(table.column(labels).to_pylist(), paths, found, strict=True)):
        if value is None or not present or (names is not None and not 0 <= value < len(names)):
            continue
        text = names[value] if names is not None else str(value).strip()
        if text:
            out.append((f"{split_name}/{index}" + (f"/{name}" if name else ""), index, text))
    if not out:
        raise MusicsteerError(f"{folder} has no labelled audio rows in split {split_name}")
    return split_name, out


def row_audio(folder: Path, split: str, index: int) -> Path | bytes:
    """The encoded audio of row `index` of the split: its bytes, or the file its path names (a
    relative path is taken from the dataset's folder). A row with neither is a MusicsteerError."""
    ds, _ = open_split(folder, split)
    column = audio_column(ds)
    value = ds[index][column]
    if value.get("bytes"):
        return value["bytes"]
    path = Path(value.get("path") or "")
    path = path if path.is_absolute() else folder / path
    if not value.get("path") or not path.is_file():
        raise MusicsteerError(f"row {index} of {folder} holds no audio bytes and its file "
                              f"{shown(value.get('path'))} is not found")
    return path
