"""`musicsteer toy corpus`: real clips rendered by FluidSynth + pedalboard, checked as the later stages use them.

Nothing is mocked except a missing renderer package (a `sys.modules` entry of None makes its import fail, as an
uninstalled package would: it cannot be uninstalled for one test). Eight clips (two per genre) are rendered twice,
once in this process and once over two worker processes, and compared byte for byte.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error

from musicsteer.probes import dataset
from musicsteer.toy import corpus
from musicsteer.toy.music import CLIP_SAMPLES, GENRES, INSTRUMENTS, LEADS, SAMPLE_RATE, TEMPI

CLIPS, SEED = 8, 7


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same corpus twice: one process, then two workers."""
    one = tmp_path_factory.mktemp("toy") / "one"
    two = tmp_path_factory.mktemp("toy") / "two"
    corpus.build(one, CLIPS, SEED, workers=1)
    corpus.build(two, CLIPS, SEED, workers=2)
    return one, two


def manifest(out: Path, name: str = "manifest.csv") -> list[dict[str, str]]:
    with (out / name).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_bytes_in_any_process(built: tuple[Path, Path]) -> None:
    one, two = built
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".wav"]) == CLIPS
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_clips_are_ten_seconds_of_mono_32k_music(built: tuple[Path, Path]) -> None:
    out = built[0]
    for row in manifest(out):
        audio, rate = sf.read(out / row["path"], dtype="float32", always_2d=True)
        assert rate == SAMPLE_RATE and audio.shape == (CLIP_SAMPLES, 1), row["path"]
        rms, peak = float(np.sqrt(np.mean(audio**2))), float(np.max(np.abs(audio)))
        assert 0.05 < rms < 0.15, (row["path"], rms)  # -20 dBFS, less where the peak limit lowered it
        assert peak < 0.9, (row["path"], peak)  # under -1 dBFS: never clipping
        seconds = [float(np.sqrt(np.mean(audio[i:i + SAMPLE_RATE] ** 2))) for i in range(0, CLIP_SAMPLES, SAMPLE_RATE)]
        assert min(seconds[:-1]) > 0.01, (row["path"], seconds)  # music all through, no silent stretch


def test_captions_say_what_the_manifest_says(built: tuple[Path, Path]) -> None:
    out = built[0]
    rows = manifest(out)
    assert [r["genre"] for r in rows] == [GENRES[i % 4] for i in range(CLIPS)]
    for row in rows:
        assert row["label"] == row["genre"] and row["path"].startswith(f"{row['genre']}/")
        assert row["instrument"] in LEADS[row["genre"]]
        low, high = TEMPI[row["genre"]]
        assert low <= int(row["tempo"]) <= high
        caption = row["caption"].lower()
        for field in ("genre", "instrument", "tempo", "key", "mood"):
            assert row[field].lower() in caption, (field, row)
        saved = json.loads((out / ".clips" / Path(row["path"]).with_suffix(".json").name).read_text())
        assert saved["row"] == row
    assert manifest(out, "instruments.csv") == [{"path": r["path"], "label": r["instrument"]} for r in rows]


def test_probe_extract_reads_the_folders_and_the_instrument_manifest(built: tuple[Path, Path]) -> None:
    out = built[0]
    sources, skipped = dataset.discover(out)  # a folder per genre; manifests, corpus.json, .clips are not audio
    assert not skipped and sorted({s.label for s in sources}) == sorted(GENRES)
    assert sorted(s.file_id for s in sources) == sorted(r["path"] for r in manifest(out))
    plan = dataset.plan(out, sources, skipped, SAMPLE_RATE, 5.0)
    assert len(plan.segments) == 2 * CLIPS and not plan.skipped
    sources, skipped = dataset.discover(out / "instruments.csv")
    assert not skipped and {s.label for s in sources} == {r["instrument"] for r in manifest(out)}


def test_rerun_keeps_valid_clips_and_replaces_broken_ones(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    corpus.build(out, 2, SEED)
    first, second = out / "classical/classical-00000.wav", out / "electronic/electronic-00001.wav"
    kept, original = first.stat().st_mtime_ns, second.read_bytes()
    second.write_bytes(original[: len(original) // 2])  # an interrupted copy
    rows = corpus.build(out, 3, SEED)  # resumed and extended by one
    assert first.stat().st_mtime_ns == kept and second.read_bytes() == original
    assert [r["path"] for r in rows] == ["classical/classical-00000.wav", "electronic/electronic-00001.wav",
                                         "jazz/jazz-00002.wav"]
    assert len(manifest(out)) == 3


def test_plan_balances_genres_and_leads_and_holds_out_every_lead() -> None:
    clips = corpus.plan(400, 3)
    assert clips == corpus.plan(400, 3) and clips != corpus.plan(400, 4)
    for genre in GENRES:
        mine = [c for c in clips if c.genre == genre]
        assert len(mine) == 100
        counts = {lead: sum(c.instrument == lead for c in mine) for lead in LEADS[genre]}
        assert max(counts.values()) - min(counts.values()) <= 2, counts
        held = [c for c in mine if corpus.split(c) == "heldout"]
        assert len(held) == 10 and {c.instrument for c in held} == set(LEADS[genre]), genre
        assert len({c.tempo for c in mine}) > 10 and len({c.tonic for c in mine}) >= 6
    assert {c.instrument for c in clips} == set(INSTRUMENTS)
    assert corpus.plan(8, 3) == clips[:8]  # a longer corpus extends a shorter one


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "--clips" in cli_error(["toy", "corpus", str(tmp_path / "a"), "--clips", "0"], capsys)
    assert "--seed" in cli_error(["toy", "corpus", str(tmp_path / "a"), "--clips", "2", "--seed", "-1"], capsys)
    assert "--clips" in cli_error(["toy", "corpus", str(tmp_path / "a")], capsys)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in cli_error(["toy", "corpus", str(busy), "--clips", "2"], capsys)
    made = tmp_path / "made"
    made.mkdir()
    (made / "corpus.json").write_text(json.dumps({"seed": 1, "version": corpus.VERSION}))
    assert "seed 1" in cli_error(["toy", "corpus", str(made), "--clips", "2", "--seed", "2"], capsys)
    (tmp_path / "file").write_text("")
    assert "is a file" in cli_error(["toy", "corpus", str(tmp_path / "file"), "--clips", "2"], capsys)
    monkeypatch.setenv("MUSICSTEER_SOUNDFONT", str(tmp_path / "none.sf2"))
    assert "fluid-soundfont-gm" in cli_error(["toy", "corpus", str(tmp_path / "b"), "--clips", "2"], capsys)
    monkeypatch.delenv("MUSICSTEER_SOUNDFONT")
    monkeypatch.setitem(sys.modules, "pedalboard", None)  # as if not installed
    line = cli_error(["toy", "corpus", str(tmp_path / "c"), "--clips", "2"], capsys)
    assert "pedalboard" in line and "musicsteer[toy]" in line
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before anything is made


def test_console_script_refuses_zero_clips(tmp_path: Path) -> None:
    done = subprocess.run(["musicsteer", "toy", "corpus", str(tmp_path), "--clips", "0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--clips" in done.stderr
