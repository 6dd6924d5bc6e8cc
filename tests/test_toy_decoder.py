"""The toy decoder stage (musicsteer/toy/decoder.py) on a few seconds of real WAV files and a codec trained for a
few steps: training lowers the loss, the codes are cached once, a stopped run resumes bit-identical, the
unconditional rows see what generate's unconditional half sees, and the saved folder loads through the
project's loader and renders audio with `musicsteer render --model FOLDER`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from toy_corpus import one_thread, write_corpus
from transformers import EncodecModel

from musicsteer.cli import main
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.loading import load_model
from musicsteer.toy.codec import CodecRecipe, codec_config, load_clips, train_codec
from musicsteer.toy.decoder import (
    DecoderRecipe,
    DecoderStage,
    delayed,
    encode_clips,
    lm_loss,
    load_items,
    train_decoder,
)
from musicsteer.toy.training import TrainConfig, read_log, train

CODEC = CodecRecipe(num_filters=4, hidden_size=16, batch_size=2, segment_frames=10, warmup_steps=2,
                    init_frames=2048, eval_clips=2, eval_frames=50, dead_uses=0.05)
RECIPE = DecoderRecipe(hidden_size=32, layers=2, heads=2, ffn_dim=64, dropout=0.0, text_size=16, text_layers=1,
                       text_heads=2, text_ff=32, segment_frames=20, batch_size=4, lr=3e-3, warmup_steps=2,
                       eval_clips=2, render_seconds=0.2)
STEPS = 10
CONFIG = TrainConfig(steps=STEPS, checkpoint_every=4, eval_every=5, progress=False)


@pytest.fixture(scope="module")
def codec_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("codec")
    assert train_codec(corpus, run, TrainConfig(steps=3, progress=False), CODEC).stopped == "done"
    return run / "model"


@pytest.fixture(scope="module")
def trained(corpus: Path, codec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("decoder")
    result = train_decoder(corpus, run, CONFIG, RECIPE, codec_dir)
    assert result.stopped == "done" and result.step == STEPS
    return run


one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def stage(corpus: Path, codec_dir: Path, run: Path) -> DecoderStage:
    from musicsteer.toy.codec import load_codec

    codec = load_codec(codec_dir)
    return DecoderStage(load_items(corpus, "train", codec, run), load_items(corpus, "held-out", codec, run), codec,
                        RECIPE, STEPS)


def test_loss_goes_down_and_run_folder_is_complete(corpus: Path, codec_dir: Path, trained: Path) -> None:
    rows = read_log(trained)
    assert [row["step"] for row in rows if row["kind"] == "train"] == list(range(1, STEPS + 1))
    evals = [row for row in rows if row["kind"] == "eval"]
    assert [row["step"] for row in evals] == [5, 10]
    assert evals[-1]["held_out_loss"] < evals[0]["held_out_loss"]
    # the loss on one fixed training batch, fresh weights against trained ones
    fresh = stage(corpus, codec_dir, trained)
    codes, captions, conditioned = fresh.batch(0)
    with torch.no_grad():
        before = lm_loss(fresh.model.eval(), fresh.processor, codes, captions, conditioned).item()
        fresh.trained.load_state_dict(torch.load(trained / "checkpoint.pt", weights_only=False)["modules"]["musicgen"])
        after = lm_loss(fresh.model, fresh.processor, codes, captions, conditioned).item()
    assert before > 7.0 and after < 0.9 * before  # ln 2048 = 7.6 at random
    assert (trained / "loss-curves.png").read_bytes()[:4] == b"\x89PNG"
    for genre in ("jazz", "rock"):  # the eval renders each genre prompt
        audio, rate = sf.read(trained / "eval" / "renders-0000010" / f"{genre}.wav")
        assert rate == 32000 and len(audio) >= 0.2 * 32000 and np.isfinite(audio).all()
    facts = json.loads((trained / "model" / "toy_decoder.json").read_text())
    assert facts["steps"] == STEPS and facts["held_out"]["held_out_loss"] == evals[-1]["held_out_loss"]
    # every clip's codes cached once, as int16 (K, 75 frames of 1.5 s)
    cached = sorted((trained / "codes").rglob("*.npy"))
    assert len(cached) == 6 and all(np.load(p).shape == (4, 75) and np.load(p).dtype == np.int16 for p in cached)


def test_stopped_run_resumes_bit_identical(corpus: Path, codec_dir: Path, trained: Path, tmp_path: Path) -> None:
    first = train(stage(corpus, codec_dir, tmp_path), tmp_path, TrainConfig(**{**CONFIG.__dict__, "stop_after": 6}))
    assert first.stopped == "stop_after"
    resumed = stage(corpus, codec_dir, tmp_path)
    train(resumed, tmp_path, CONFIG)
    straight = torch.load(trained / "checkpoint.pt", weights_only=False)["modules"]["musicgen"]
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed.trained.state_dict()[name]), name


def test_delay_pattern_and_unconditional_rows(corpus: Path, codec_dir: Path, tmp_path: Path) -> None:
    s = stage(corpus, codec_dir, tmp_path)
    codes = torch.arange(4 * 5).reshape(1, 4, 5)
    seq = delayed(codes, s.model)[0]  # (K, T + K): start, then codebook k delayed by k
    assert seq.shape == (4, 9)
    for k in range(4):
        assert seq[k, : k + 1].eq(2048).all() and seq[k, k + 1: k + 6].tolist() == codes[0, k].tolist()
        assert seq[k, k + 6:].eq(2048).all()
    # a dropped caption is the unconditional half generate feeds: zero text states under a zero mask, whatever
    # the caption was
    codes, captions, _ = s.batch(0)
    off = torch.zeros(len(captions), dtype=torch.bool)
    s.model.eval()
    with torch.no_grad():
        a = lm_loss(s.model, s.processor, codes, captions, off)
        b = lm_loss(s.model, s.processor, codes, ["x"] * len(captions), off)
        c = lm_loss(s.model, s.processor, codes, captions, ~off)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_saved_model_loads_and_renders(trained: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    with safe_open(trained / "model" / "model.safetensors", "pt") as f:  # stored in float16, loaded as asked
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (not a dict)
    lm = load_model(str(trained / "model"), device="cpu")
    assert lm.model.decoder.lm_heads[0].weight.dtype == torch.float32
    assert (lm.num_codebooks, lm.codebook_size, lm.frame_rate, lm.d_model) == (4, 2048, 50, 32)
    out = tmp_path / "jazz.wav"
    assert main(["render", "--model", str(trained / "model"), "--device", "cpu", "--prompt", "jazz", "--seconds", "1",
                 "--seed", "1", "--out", str(out)]) == 0
    audio, rate = sf.read(out)
    assert rate == 32000 and len(audio) == 32000 and np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_codes_of_another_codec_are_refused(corpus: Path, trained: Path) -> None:
    """The cached codes mean what the codec that made them says: another codec's run folder is refused, as is a
    checkpoint whose recipe names another codec (training.py compares the recipes)."""
    other = EncodecModel(codec_config(CODEC))
    with pytest.raises(MusicsteerError, match="codes of another codec"):
        encode_clips(other, load_clips(corpus, "train")[:1], trained / "codes")
