"""Only a file's own fault counts as its unreadable file (issue 28, item 5's kind).

Every path where probe extraction skips a file as unreadable: the header plan (probes/dataset.plan), the
decoding workers in this process and in 2 processes (probes/pipeline.FileDecodes), and what --ray ships
to its actors (probes/extract_ray._ship; the function itself, without a cluster). In each, a file that is
not audio, holds NaN, or is headerless .raw (soundfile's TypeError) is the user's and is skipped and
listed; an error of ours met on the way is not counted as the file's. The errors of ours are planted,
which is the one thing faked here: the named one (a single dataset's rows reopened with a split name,
refused in one line, was counted as 9 unreadable files) and a wrong argument (a TypeError).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from musicsteer.engine.errors import MusicsteerError, Unreadable
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.probes import dataset, hf_data, pipeline
from musicsteer.probes.extract_ray import Shipped, Unshipped, _ship

RATE = 16000


@pytest.fixture
def collection(tmp_path):
    """Two good clips per label, and the user's bad files: not audio, NaN samples, headerless .raw."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            sf.write(tmp_path / label / f"{i}.wav", synthetic_clip("chord", 1.0, RATE, i), RATE)
    (tmp_path / "a" / "notes.wav").write_text("not audio")
    bad = synthetic_clip("chord", 1.0, RATE, 5)
    bad[10] = np.nan
    sf.write(tmp_path / "b" / "nan.wav", bad, RATE, subtype="FLOAT")
    (tmp_path / "b" / "take.raw").write_bytes(bytes(4000))
    return tmp_path


def jobs(plan: dataset.Plan) -> list[pipeline.Job]:
    return [(plan.sources[f], segs) for f, segs in dataset.by_file(plan.segments).items()]


def test_the_users_bad_files_are_skipped_on_every_path(collection) -> None:
    sources, skipped = dataset.discover(collection)
    plan = dataset.plan(collection, sources, skipped, RATE, 1.0)
    assert {s["file"] for s in plan.skipped} == {"a/notes.wav", "b/take.raw"}  # headers that do not read
    for workers in (0, 2):  # the NaN file's header reads: its data fails when decoded
        decoded = {d.file_id: d for d in pipeline.decoded(jobs(plan), RATE, 1, workers)}
        assert decoded["b/nan.wav"].segments is None and "NaN" in decoded["b/nan.wav"].error
        assert all(d.segments for f, d in decoded.items() if f != "b/nan.wav")
    shipped = _ship([plan.segments], plan.sources)
    assert all(isinstance(s, Shipped) for s in shipped.values())  # bytes read here; the actor's decode judges
    source = next(s for s in sources if s.file_id == "a/notes.wav")
    (item,) = pipeline.decoded([(source, [dataset.Segment(0, source.file_id, "a", 0, RATE)])], RATE, 1)
    assert item.segments is None and "cannot read audio file a/notes.wav" in item.error


@pytest.fixture
def single_dataset(collection, tmp_path_factory):
    """A plain Dataset saved with save_to_disk, of the collection's good clips."""
    from datasets import Dataset

    files = sorted(collection.glob("*/[01].wav"))
    folder = tmp_path_factory.mktemp("ds") / "ds"
    Dataset.from_dict({"audio": [p.read_bytes() for p in files], "label": [p.parent.name for p in files]}) \
        .save_to_disk(str(folder))
    return f"hf:{folder}"


def plant_split_refusal(monkeypatch) -> None:
    """The named fault, planted: each row reopened with the split name `data`, which a single dataset refuses."""
    real = hf_data.row_audio
    monkeypatch.setattr(hf_data, "row_audio", lambda folder, split, index: real(folder, "data", index))


def plant_wrong_argument(monkeypatch) -> None:
    """A bug handing the decoder something that is no file (here None) instead of a row's bytes."""
    monkeypatch.setattr(hf_data, "row_audio", lambda folder, split, index: None)


@pytest.mark.parametrize(("plant", "error", "message"), [
    (plant_split_refusal, MusicsteerError, "is a single dataset, not split into 'data'"),
    (plant_wrong_argument, TypeError, "an audio file is a path or its bytes, got NoneType"),
])
def test_an_error_of_ours_is_never_counted_as_the_users_file(plant, error, message, single_dataset,
                                                             monkeypatch) -> None:
    sources, skipped = dataset.discover(single_dataset)
    good = dataset.plan(single_dataset, sources, skipped, RATE, 1.0)
    plant(monkeypatch)
    with pytest.raises(error, match=message) as found:  # the header plan
        dataset.plan(single_dataset, sources, skipped, RATE, 1.0)
    assert not isinstance(found.value, Unreadable)
    with pytest.raises(error, match=message):  # the decoding, in this process
        list(pipeline.decoded(jobs(good), RATE, 1, 0))
    with pytest.raises(MusicsteerError, match="a decoding worker failed") as found:  # in 2 worker processes
        list(pipeline.decoded(jobs(good), RATE, 1, 2))
    assert message.split(",")[0] in str(found.value)
    with pytest.raises(error):  # what --ray ships (a TypeError of its own: it reads a path it was not given)
        _ship([good.segments], good.sources)


def test_a_row_without_audio_is_the_users_on_every_path(single_dataset, tmp_path) -> None:
    from datasets import Dataset

    Dataset.from_dict({"path": [str(tmp_path / "gone.wav"), str(tmp_path / "gone2.wav")], "label": ["a", "b"]}) \
        .save_to_disk(str(tmp_path / "paths"))
    spec = f"hf:{tmp_path / 'paths'}"
    sources, skipped = dataset.discover(spec)
    line = str(pytest.raises(MusicsteerError, dataset.plan, spec, sources, skipped, RATE, 1.0).value)
    # every row skipped as the user's: the reason of the first is in the line
    assert line.startswith(f"no readable audio in {spec} (2 file(s) skipped; the first: row 0 of ")
    segment = [dataset.Segment(0, sources[0].file_id, "a", 0, RATE)]
    (item,) = pipeline.decoded([(sources[0], segment)], RATE, 1)
    assert item.segments is None and "holds no audio bytes" in item.error
    shipped = _ship([segment], {sources[0].file_id: sources[0]})[sources[0].file_id]
    assert isinstance(shipped, Unshipped) and "holds no audio bytes" in shipped.error
