"""The shipped toy end to end, on real WAV files: `musicsteer toy train` runs every stage of the plan (tiny recipes,
few steps: TINY_PLAN), the last being the toy's vectors made by the probe pipeline on the held-out clips; `toy ship`
puts model, judge and vectors into a temporary package folder ($MUSICSTEER_TOY_WEIGHTS); `render --model toy
--vectors toy` writes a real WAV through the same from_pretrained path as a hub model, `eval --model toy --clap toy`
scores with the shipped judge, and the toy's fingerprint names its weights. Before anything is shipped, each of
--model/--clap/--vectors toy is one line, exit 2; ship refuses an unfinished run, a foreign folder, and a shipment
over its cap (with the sizes, nothing changed)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli_error
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from toy_corpus import TINY_DECODER, TINY_PLAN, write_corpus

from musicsteer.cli import main
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.loading import files_digest, load_model
from musicsteer.engine.vectors import SteeringVectors
from musicsteer.evaluation.clap import ClapScorer
from musicsteer.toy import plan
from musicsteer.toy.ship import ship
from musicsteer.toy.shipped import ENV, MANIFEST, NOT_TRAINED

CPU = ["--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(corpus, run, what `toy train` printed)."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    run = tmp_path_factory.mktemp("run") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setattr(plan, "PLAN", TINY_PLAN)
        assert main(["toy", "train", str(corpus), str(run), "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    return corpus, run, out.getvalue()


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty package folder for this test (nothing shipped yet)."""
    folder = tmp_path / "weights"
    monkeypatch.setenv(ENV, str(folder))
    return folder


def test_train_runs_every_stage_and_the_probe_pipeline(trained: tuple[Path, Path, str], tmp_path: Path) -> None:
    corpus, run, out = trained
    for stage in ("codec", "judge", "decoder", "vectors"):
        assert plan.finished(run, stage), stage
    assert "judge: 4 of 4 steps" in out and "held out: zero_shot_accuracy" in out
    assert "vectors: 1 of 1 steps" in out and "genre_best_layer" in out
    assert f"to ship it: musicsteer toy ship {run}" in out
    vectors = run / "vectors"
    for family, labels in (("genre", ["jazz", "rock"]), ("instrument", ["guitar", "sax"])):
        rows = (vectors / f"heldout-{family}.csv").read_text().splitlines()
        assert len(rows) == 3 and all("-00002.wav" in row for row in rows[1:])  # the held-out clips only
        made = SteeringVectors.load(vectors / f"{family}.safetensors")
        assert sorted(made.labels) == labels and (made.num_layers, made.d_model) == (TINY_DECODER.layers,
                                                                                      TINY_DECODER.hidden_size)
        assert (vectors / f"report-{family}" / "layers.csv").read_text().startswith("layer,ari,nmi,probe_accuracy")
        # the probe CLI on the same activations writes the same directions: the stage runs its functions
        again = tmp_path / f"{family}.safetensors"
        assert main(["probe", "train", str(vectors / f"acts-{family}"), "--out", str(again)]) == 0
        assert all(torch.equal(made.directions[k], SteeringVectors.load(again).directions[k]) for k in labels)
    facts = json.loads((vectors / "toy_vectors.json").read_text())
    assert set(facts["held_out"]) == {"genre_best_layer", "genre_accuracy", "instrument_best_layer",
                                      "instrument_accuracy"}
    tables = (vectors / "tables.md").read_text()
    assert tables.count("| layer | ARI | NMI | probe accuracy |") == 2 and "Best layer (probe accuracy)" in tables


def test_ship_then_render_and_eval_through_the_shipped_toy(trained: tuple[Path, Path, str], weights: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, run, _ = trained
    assert main(["toy", "ship", str(run)]) == 0
    assert f"shipped {run} into {weights}" in capsys.readouterr().out
    manifest = json.loads((weights / MANIFEST).read_text())
    assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"].values()) <= 30_000_000
    assert set(manifest["stages"]) == {"model", "judge", "vectors"}
    for part in ("model", "judge"):
        with safe_open(weights / part / "model.safetensors", "pt") as f:
            names = f.keys()
            floats = {f.get_slice(k).get_dtype() for k in names} - {"I64"}  # (position ids, BatchNorm's count)
            assert floats == {"F16"}, part
    assert (weights / "vectors" / "genre.safetensors").read_bytes() == (run / "vectors" / "genre.safetensors"
                                                                         ).read_bytes()

    wav = tmp_path / "toy.wav"
    assert main(["render", "--model", "toy", *CPU, "--prompt", "jazz", "--seconds", "1", "--seed", "1",
                 "--vectors", "toy", "--steer", "rock", "--alpha", "0.5", "--out", str(wav)]) == 0
    audio, rate = sf.read(wav)
    assert rate == 32000 and len(audio) == 32000 and np.isfinite(audio).all() and np.abs(audio).max() > 0

    out = tmp_path / "eval"
    assert main(["eval", "--model", "toy", *CPU, "--clap", "toy", "--vectors", str(weights / "vectors" /
                 "genre.safetensors"), "--pairs", "jazz:rock", "--n", "1", "--source-seconds", "1", "--seconds",
                 "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["clap"] == "toy" and results["settings"]["model_fingerprint"].startswith("toy:")
    scorer = ClapScorer("toy")
    clip = "source/jazz-00"
    assert list(results["clips"][clip]) == ["jazz", "rock"]
    expected = scorer.scores([scorer.load(out / "clips" / f"{clip}.wav")], ["jazz", "rock"])[0]
    assert list(results["clips"][clip].values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_fingerprint_names_the_weights(trained: tuple[Path, Path, str], weights: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, run, _ = trained
    ship(run)
    lm = load_model("toy", device="cpu")
    assert lm.dtype == torch.float32 and lm.weights_id == f"toy-{files_digest(weights / 'model', '*.safetensors')}"
    assert lm.fingerprint.startswith("toy:")
    # the same architecture with one weight changed: another fingerprint (a log made with one replays on it only)
    other = weights.parent / "other"
    shutil.copytree(weights, other)
    tensors = load_file(other / "model" / "model.safetensors")
    name = next(k for k in tensors if k.startswith("decoder."))
    tensors[name] = tensors[name] + 1
    save_file(tensors, other / "model" / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv(ENV, str(other))
    assert load_model("toy", device="cpu").fingerprint != lm.fingerprint


def test_before_shipping_each_toy_name_is_one_line(trained: tuple[Path, Path, str], weights: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    _, run, _ = trained
    wav = str(tmp_path / "x.wav")
    assert NOT_TRAINED in cli_error(["render", "--model", "toy", *CPU, "--seconds", "1", "--out", wav], capsys)
    assert NOT_TRAINED in cli_error(["render", "--model", "tiny", *CPU, "--seconds", "1", "--vectors", "toy", "--out",
                                     wav], capsys)
    genre = str(run / "vectors" / "genre.safetensors")
    assert NOT_TRAINED in cli_error(["eval", "--model", "tiny", *CPU, "--clap", "toy", "--vectors", genre,
                                     "--pairs", "jazz:rock", "--out", str(tmp_path / "eval")], capsys)
    with pytest.raises(MusicsteerError, match="not trained yet"):
        ClapScorer("toy")
    assert "toy:genre, toy:instrument" in cli_error(["render", "--model", "tiny", "--seconds", "1", "--vectors",
                                                     "toy:drums", "--out", wav], capsys)


def test_ship_refuses(trained: tuple[Path, Path, str], weights: Path, tmp_path: Path) -> None:
    _, run, _ = trained
    ship(run)
    before = (weights / MANIFEST).read_bytes()
    with pytest.raises(MusicsteerError, match=r"the toy is [\d.]+ MB \(model [\d.]+ MB, judge [\d.]+ MB, vectors "
                                              r"[\d.]+ MB\), over the 0.001 MB the package allows; nothing shipped"):
        ship(run, cap=1000)
    assert (weights / MANIFEST).read_bytes() == before and not list(weights.parent.glob(".weights.*"))
    with pytest.raises(MusicsteerError, match="has no finished decoder, judge, vectors stage"):
        ship(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MusicsteerError, match="is not a toy weights folder"):
        ship(run, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
