"""Every shape `datasets` saves reads as `--data hf:PATH[:SPLIT]` (issue 28, item 5).

The named fault: a plain `Dataset` (what from_dict/from_list/from_pandas make) saved with save_to_disk
read as empty: its rows were named split `data`, the decoding path then refused a split name on a single
dataset, and every row was counted as the user's unreadable file. Here each shape is real save_to_disk
output (Dataset and DatasetDict; an Audio column cast with decode or not, an uncast {bytes, path} column,
a bytes column, a column of absolute or relative file paths; with and without a split, and
`hf:PATH:SPLIT` on each), walked through every path a row takes: discovery and the header plan
(probes/dataset.py), the decoding workers in this process and in 2 processes (probes/pipeline.py), and
what --ray ships to its actors (probes/extract_ray._ship, without a cluster: the function itself). The
named example also runs `probe extract` end to end and gives the folder's activations.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error, one_line_error

from musicsteer.engine.audio_io import decode_audio
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.probes import dataset, hf_data, pipeline
from musicsteer.probes.cache import KEYS
from musicsteer.probes.extract_ray import Shipped, Unshipped, _ship

datasets = pytest.importorskip("datasets")  # an optional extra; installed for the tests (scripts/test)

KINDS = ("chord", "drums", "noise")
RATE = 32000
FLAGS = ["--model", "tiny", "--device", "cpu", "--segment-seconds", "1"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """2 clips of 2 s per label, as a folder with one sub-folder per label."""
    folder = tmp_path_factory.mktemp("hf") / "clips"
    for kind in KINDS:
        (folder / kind).mkdir(parents=True)
        for i in range(2):
            sf.write(folder / kind / f"{i:02d}.wav", synthetic_clip(kind, 2.0, RATE, i), RATE)
    return folder


def files(clips: Path) -> list[Path]:
    return [p for kind in KINDS for p in sorted((clips / kind).iterdir())]


def shape(name: str, clips: Path, root: Path) -> tuple[object, str]:
    """The clips as the dataset `name`, and the column that must be read as audio."""
    from datasets import Audio, ClassLabel, Dataset

    found = files(clips)
    labels = [p.parent.name for p in found]
    encoded = [{"bytes": p.read_bytes(), "path": p.name} for p in found]
    if name == "audio-cast-no-decode":  # the named example's shape
        return Dataset.from_dict({"audio": encoded, "label": labels}).cast_column("audio", Audio(decode=False)), "audio"
    if name == "audio-cast-decode":  # cast over paths: save_to_disk embeds the files' bytes
        ds = Dataset.from_dict({"audio": [str(p) for p in found], "label": labels}).cast_column("audio", Audio())
        return ds, "audio"
    if name == "struct-uncast":
        return Dataset.from_dict({"sound": encoded, "label": labels}), "sound"
    if name == "bytes":  # from_list: a binary column
        return Dataset.from_list([{"wav": p.read_bytes(), "label": label} for p, label in zip(found, labels,
                                                                                            strict=True)]), "wav"
    if name == "paths-pandas":  # a CSV manifest read with pandas: path,label (large_string columns)
        import pandas as pd

        return Dataset.from_pandas(pd.DataFrame({"path": [str(p) for p in found], "label": labels})), "path"
    if name == "paths-relative":  # relative to the dataset's folder
        return Dataset.from_dict({"audio": [os.path.relpath(p, root / "ds") for p in found], "label": labels}), "audio"
    if name == "classlabel":
        ds = Dataset.from_dict({"audio": encoded, "genre": labels}).cast_column("audio", Audio(decode=False))
        return ds.cast_column("genre", ClassLabel(names=list(KINDS))), "audio"
    raise AssertionError(name)


SHAPES = ("audio-cast-no-decode", "audio-cast-decode", "struct-uncast", "bytes", "paths-pandas", "paths-relative",
          "classlabel")


def save(ds, folder: Path, layout: str) -> None:
    """`ds` saved as a plain Dataset, a Dataset that knows its split, or a DatasetDict of one or two splits."""
    from datasets import Dataset, DatasetDict

    if layout == "dataset":
        ds.save_to_disk(str(folder))
    elif layout == "dataset-split":  # what load_dataset(..., split="train") gives
        Dataset(ds.data, info=ds.info, split="train").save_to_disk(str(folder))
    elif layout == "dict-one":
        DatasetDict({"train": ds}).save_to_disk(str(folder))
    else:
        DatasetDict({"test": ds.select(range(2)), "train": ds}).save_to_disk(str(folder))


def walk(spec: str, clips: Path) -> list[dataset.Source]:
    """Every path a row takes, checked: all rows found with their labels, the header plan skips none, the
    decoding workers (0 and 2 processes) give each file's audio, and --ray ships each file's bytes."""
    sources, skipped = dataset.discover(spec)
    assert skipped == [] and [s.label for s in sources] == [p.parent.name for p in files(clips)]
    plan = dataset.plan(spec, sources, skipped, RATE, 1.0)
    assert plan.skipped == [] and len(plan.segments) == 2 * len(sources)
    expected = {s.file_id: decode_audio(p, RATE, 1) for s, p in zip(sources, files(clips), strict=True)}
    jobs = list(dataset.by_file(plan.segments).items())
    for workers in (0, 2):
        decoded = list(pipeline.decoded([(plan.sources[f], segs) for f, segs in jobs], RATE, 1, workers))
        assert [d.error for d in decoded] == [None] * len(sources)
        for item, (file_id, _segs) in zip(decoded, jobs, strict=True):
            whole = np.concatenate(item.segments, axis=1)
            assert np.array_equal(whole, expected[file_id][:, : whole.shape[1]]), (workers, file_id)
    shipped = _ship([plan.segments], plan.sources)
    assert all(isinstance(item, Shipped) for item in shipped.values())
    for file_id, item in shipped.items():
        assert np.array_equal(decode_audio(item.data, RATE, 1), expected[file_id]), file_id
    return sources


@pytest.mark.parametrize("name", SHAPES)
def test_every_column_shape_of_a_plain_dataset_is_read(name, clips, tmp_path) -> None:
    ds, column = shape(name, clips, tmp_path)
    folder = tmp_path / "ds"
    save(ds, folder, "dataset")
    loaded = datasets.load_from_disk(str(folder))
    assert isinstance(loaded, datasets.Dataset) and loaded.split is None
    assert hf_data.audio_column(loaded) == column
    sources = walk(f"hf:{folder}", clips)
    assert sources[0].file_id.startswith("data/0")
    assert "is a single dataset" in one_line_error(dataset.discover, f"hf:{folder}:train")


@pytest.mark.parametrize("layout", ["dataset-split", "dict-one", "dict-two"])
def test_every_layout_and_split_spec_is_read(layout, clips, tmp_path) -> None:
    ds, _ = shape("audio-cast-no-decode", clips, tmp_path)
    folder = tmp_path / "ds"
    save(ds, folder, layout)
    specs = [f"hf:{folder}:train"] + ([] if layout == "dict-two" else [f"hf:{folder}"])
    for spec in specs:
        assert walk(spec, clips)[0].file_id == "train/0/00.wav", spec
    if layout == "dict-two":
        sources, _ = dataset.discover(f"hf:{folder}:test")
        assert [s.file_id for s in sources] == ["test/0/00.wav", "test/1/01.wav"]


def test_paths_relative_to_the_working_directory(clips, tmp_path, monkeypatch) -> None:
    from datasets import Dataset

    monkeypatch.chdir(clips.parent)
    Dataset.from_dict({"path": [str(p.relative_to(clips.parent)) for p in files(clips)],
                       "label": [p.parent.name for p in files(clips)]}).save_to_disk(str(tmp_path / "ds"))
    walk(f"hf:{tmp_path / 'ds'}", clips)


def test_a_row_without_audio_is_that_rows_unreadable_file_everywhere(clips, tmp_path) -> None:
    """The one error of a row: counted as its file, in the plan, in the decoding workers, in what --ray ships."""
    from datasets import Dataset

    found = files(clips)
    paths = [str(p) for p in found]
    paths[1] = str(tmp_path / "gone.wav")
    Dataset.from_dict({"path": paths, "label": [p.parent.name for p in found]}).save_to_disk(str(tmp_path / "ds"))
    spec = f"hf:{tmp_path / 'ds'}"
    sources, skipped = dataset.discover(spec)
    plan = dataset.plan(spec, sources, skipped, RATE, 1.0)
    assert [s["file"] for s in plan.skipped] == [sources[1].file_id]
    assert "holds no audio bytes and its file" in plan.skipped[0]["reason"]
    # the decoding workers and --ray's shipping meet it when the header plan did not (a file gone meanwhile)
    gone = [(sources[1], [dataset.Segment(0, sources[1].file_id, sources[1].label, 0, RATE)])]
    for workers in (0, 1):
        (item,) = pipeline.decoded(gone, RATE, 1, workers)
        assert item.segments is None and "holds no audio bytes" in item.error
    shipped = _ship([gone[0][1]], {sources[1].file_id: sources[1]})[sources[1].file_id]
    assert isinstance(shipped, Unshipped) and "holds no audio bytes" in shipped.error
    (item,) = pipeline.decoded([(shipped, gone[0][1])], RATE, 1, 0)
    assert item.segments is None and item.error == shipped.error


@pytest.mark.parametrize(("make", "expected"), [
    ("split-on-plain", "is a single dataset, not split into 'train': give --data hf:"),
    ("split-on-named", "is a single dataset, not split into 'test': give --data hf:"),
    ("no-audio", "cannot tell the audio column among ['label', 'note']: cast it to datasets.Audio, or name a "
                 "column of file paths audio or path"),
    ("two-audio", "the dataset has several audio columns, a, b: keep one"),
    ("empty", "holds no rows (or a split of it none): no audio to read"),  # datasets' IndexError: a traceback
    ("empty-select", "holds no rows (or a split of it none): no audio to read"),
])
def test_dataset_refusals_are_one_line_before_any_audio(make, expected, clips, tmp_path, capsys) -> None:
    from datasets import Audio, Dataset

    rows = {"label": ["rock", "jazz"], "note": ["x", "y"]}
    encoded = [{"bytes": p.read_bytes(), "path": None} for p in files(clips)[:2]]
    folder, spec = tmp_path / "ds", f"hf:{tmp_path / 'ds'}"
    if make == "split-on-plain":
        Dataset.from_dict({**rows, "audio": encoded}).save_to_disk(str(folder))
        spec += ":train"
    elif make == "split-on-named":
        ds = Dataset.from_dict({**rows, "audio": encoded})
        Dataset(ds.data, split="train").save_to_disk(str(folder))
        spec += ":test"
    elif make == "no-audio":
        Dataset.from_dict(rows).save_to_disk(str(folder))
    elif make == "empty":
        Dataset.from_dict({"audio": [], "label": []}).save_to_disk(str(folder))
    elif make == "empty-select":
        Dataset.from_dict({**rows, "audio": encoded}).select([]).save_to_disk(str(folder))
    else:
        ds = Dataset.from_dict({**rows, "a": encoded, "b": encoded})
        ds.cast_column("a", Audio(decode=False)).cast_column("b", Audio(decode=False)).save_to_disk(str(folder))
    assert expected in cli_error(["probe", "extract", "--data", spec, "--out", str(tmp_path / "acts"), *FLAGS], capsys)


def test_the_named_example_extracts_the_folders_activations(clips, tmp_path, capsys) -> None:
    """`probe extract --data hf:PATH` on a plain Dataset saved with save_to_disk: before the fix, 'no readable
    audio in hf:PATH (6 file(s) skipped)'; now the same activations as the folder of the same files."""
    from musicsteer.cli import main

    ds, _ = shape("audio-cast-no-decode", clips, tmp_path)
    save(ds, tmp_path / "ds", "dataset")
    folder_out, hf_out = tmp_path / "acts-folder", tmp_path / "acts-hf"
    assert main(["probe", "extract", "--data", str(clips), "--out", str(folder_out), *FLAGS]) == 0
    assert main(["probe", "extract", "--data", f"hf:{tmp_path / 'ds'}", "--out", str(hf_out), *FLAGS]) == 0, \
        capsys.readouterr().err
    manifest = json.loads((hf_out / "manifest.json").read_text())
    assert manifest["skipped"] == [] and manifest.get("missing", []) == [] and manifest["files"] == 6
    assert manifest["segments"][0][0] == "data/0/00.wav"
    for key in KEYS:
        assert np.array_equal(np.load(hf_out / f"{key}.npy"), np.load(folder_out / f"{key}.npy")), key
    capsys.readouterr()
    assert main(["probe", "extract", "--data", f"hf:{tmp_path / 'ds'}", "--out", str(hf_out), *FLAGS]) == 0
    assert "already complete" in capsys.readouterr().out


def test_bytes_of_another_format_decode(clips, tmp_path) -> None:
    """Encoded FLAC bytes in a bytes column: soundfile reads the format from the data, not a file name."""
    from datasets import Dataset

    rows = []
    for p in files(clips):
        buffer = io.BytesIO()
        sf.write(buffer, sf.read(p)[0], RATE, format="FLAC")
        rows.append({"audio": buffer.getvalue(), "label": p.parent.name})
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    sources, _ = dataset.discover(f"hf:{tmp_path / 'ds'}")
    assert isinstance(sources[0].encoded(), bytes) and sources[0].file_id == "data/0"
    walk(f"hf:{tmp_path / 'ds'}", clips)
