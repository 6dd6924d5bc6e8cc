"""The toy codec stage (musicsteer/toy/codec.py, quantizer.py, losses.py) on a few seconds of real WAV files:
a few training steps lower the loss, a stopped run resumes bit-identical, the saved folder loads with
`EncodecModel.from_pretrained`, encodes to 4 codebooks of 2048 at 50 frames/s with the codes training picked,
and streams through the engine's StreamingDecoder as its one-shot decode does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from toy_corpus import one_thread, write_corpus
from transformers import EncodecModel

from musicsteer.engine.codec import decode_codes
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.streaming_decoder import StreamingDecoder
from musicsteer.engine.synthetic import synthetic_clip
from musicsteer.toy import quantizer
from musicsteer.toy.codec import CodecRecipe, CodecStage, load_clips, train_codec
from musicsteer.toy.losses import MultiScaleMel, si_snr
from musicsteer.toy.training import TrainConfig, read_log, train

# Small enough to train in seconds, but the shipped layout: 4 codebooks of 2048, hop 640. The encoder's drift
# collapses the k-means codebooks within a few steps (quantizer.py); dead_uses 0.05 re-seeds idle codes after
# 6 steps (20 frames a step) so that the run's end sees them replaced, as a long run does after 21.
RECIPE = CodecRecipe(num_filters=4, hidden_size=16, batch_size=2, segment_frames=10, warmup_steps=2,
                     init_frames=2048, eval_clips=2, eval_frames=50, dead_uses=0.05)
STEPS = 12
CONFIG = TrainConfig(steps=STEPS, checkpoint_every=4, eval_every=6, progress=False)


one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    result = train_codec(corpus, run, CONFIG, RECIPE)
    assert result.stopped == "done" and result.step == STEPS
    return run


def fixed_batch_mel(model: EncodecModel, audio: torch.Tensor) -> float:
    """The mel loss of a codec (encoder, training quantizer, decoder) on `audio` (B, 1, S), nothing updated."""
    model = model.eval()
    with torch.no_grad():
        quantized, _, _, _ = quantizer.quantize(model, model.encoder(audio), update=False)
        return MultiScaleMel(32000)(audio, model.decoder(quantized)[..., : audio.shape[-1]]).item()


def test_loss_goes_down_and_run_folder_is_complete(corpus: Path, trained: Path, tmp_path: Path) -> None:
    rows = read_log(trained)
    assert [row["step"] for row in rows if row["kind"] == "train"] == list(range(1, STEPS + 1))
    assert min(row["perplexity_0"] for row in rows if row["kind"] == "train") > 4  # the codebook never collapsed
    # The training loss jumps with each batch's crops (2.2-4.9 over 40 steps); the loss on one fixed batch does not:
    # after 1 step (the codebooks k-means'd) against after all of them
    clips = load_clips(corpus, "train")
    audio = torch.stack([torch.from_numpy(c.audio[8000:24000]) for c in clips])[:, None]
    early = CodecStage(clips, load_clips(corpus, "held-out"), RECIPE, STEPS)
    train(early, tmp_path, TrainConfig(**{**CONFIG.__dict__, "stop_after": 1}))
    assert fixed_batch_mel(EncodecModel.from_pretrained(trained / "model"), audio) < 0.95 * fixed_batch_mel(
        early.model, audio)
    evals = [row for row in rows if row["kind"] == "eval"]
    assert [row["step"] for row in evals] == [6, 12]
    assert all(math.isfinite(row["mel_distance"]) and math.isfinite(row["si_snr_db"]) for row in evals)
    assert {f"perplexity_{k}" for k in range(4)} <= set(evals[-1])
    for png in ("eval/spectrograms-0000006.png", "eval/spectrograms-0000012.png", "loss-curves.png"):
        assert (trained / png).read_bytes()[:4] == b"\x89PNG"
    facts = json.loads((trained / "model" / "toy_codec.json").read_text())
    assert facts["steps"] == STEPS and facts["held_out"]["mel_distance"] == evals[-1]["mel_distance"]


def test_stopped_run_resumes_bit_identical(corpus: Path, trained: Path, tmp_path: Path) -> None:
    stage = lambda: CodecStage(load_clips(corpus, "train"), load_clips(corpus, "held-out"), RECIPE, STEPS)  # noqa: E731
    # stop at 5: after the quantizer's k-means init and a checkpoint (4), before the first eval (6)
    first = train(stage(), tmp_path, TrainConfig(**{**CONFIG.__dict__, "stop_after": 5}))
    assert first.stopped == "stop_after"
    resumed = stage()
    train(resumed, tmp_path, CONFIG)
    straight = EncodecModel.from_pretrained(trained / "model")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    # the codebook followed the encoder's offset after the last update, not before it: what is saved is in step
    with torch.no_grad():
        assert torch.equal(resumed.probe_mean, resumed.model.encoder(resumed.probe).mean(dim=(0, 2)))


def test_saved_codec_loads_and_encodes_as_trained(corpus: Path, trained: Path) -> None:
    codec = EncodecModel.from_pretrained(trained / "model").eval()
    assert (codec.config.sampling_rate, codec.config.frame_rate, codec.config.codebook_size) == (32000, 50, 2048)
    audio = torch.from_numpy(load_clips(corpus, "held-out")[0].audio[:32000])[None, None]
    with torch.no_grad():
        codes = codec.encode(audio, bandwidth=None).audio_codes  # (chunks, batch, codebooks, frames)
        assert codes.shape == (1, 1, 4, 50)
        # the training quantizer picks the codes transformers' inference does, from the same buffers
        _, trained_codes, _, _ = quantizer.quantize(codec, codec.encoder(audio), update=False)
    assert torch.equal(trained_codes, codes[0])
    assert len(codes[0, 0, 0].unique()) > 1  # the first codebook is not down to one code (a collapse)
    # the engine's streaming decoder plays it as its one-shot decode does
    lm = SimpleNamespace(model=SimpleNamespace(audio_encoder=codec), sample_rate=32000, frame_rate=50,
                         audio_channels=1, num_codebooks=4, device=torch.device("cpu"), dtype=torch.float32)
    reference = decode_codes(lm, codes[0, 0])
    decoder = StreamingDecoder(lm)
    chunks = [decoder.push(codes[0, 0, :, i]) for i in range(50)]
    streamed = np.concatenate([c for c in chunks if c is not None] + [decoder.flush()], axis=1)
    assert streamed.shape == reference.shape == (1, 32000)
    error = float(np.mean((streamed - reference) ** 2)) / max(float(np.mean(reference**2)), 1e-20)
    assert 10 * math.log10(max(error, 1e-30)) < -30.0


def test_dead_codes_are_replaced_after_a_collapse() -> None:
    """Every frame picking one code (what a drifting encoder does to k-means codebooks) is undone once the idle
    codes have waited `dead_after` steps: they are re-seeded from the batch and picked again."""
    from transformers import EncodecConfig

    config = EncodecConfig(codebook_size=16, hidden_size=4, codebook_dim=4, target_bandwidths=[0.2 * 4],
                           upsampling_ratios=[8, 5, 4, 4], sampling_rate=32000)
    model = SimpleNamespace(quantizer=SimpleNamespace(layers=[EncodecModel(config).quantizer.layers[0]]))
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(256, 4, generator=generator)
    quantizer.init_codebooks(model, frames + 100.0, frames_per_step=64, generator=generator)  # far from the data
    last_used = torch.zeros(1, 16, dtype=torch.long)
    dead_after = quantizer.dead_after_steps(16, 64)
    assert dead_after == 1
    batch = frames[:64].T[None]  # (1, D, T)
    _, codes, _, stats = quantizer.quantize(model, batch, update=True, step=1, last_used=last_used,
                                            dead_after=dead_after, generator=generator)
    assert len(codes.unique()) == 1  # collapsed: one code (the nearest of the far ones) takes every frame
    for step in range(2, 5):
        _, codes, _, stats = quantizer.quantize(model, batch, update=True, step=step, last_used=last_used,
                                                dead_after=dead_after, generator=generator)
    assert len(codes.unique()) > 8


def test_metrics_and_bad_corpora(tmp_path: Path) -> None:
    mel = MultiScaleMel(32000)
    x = torch.from_numpy(synthetic_clip("chord", 0.5, 32000, seed=1))[None, None]
    assert mel(x, x).item() == 0.0 and mel(x, 0.5 * x).item() > 0.1
    assert si_snr(x, 0.5 * x).item() > 60.0  # scale-invariant
    noisy = x + 0.1 * x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert si_snr(x, noisy).item() == pytest.approx(20.0, abs=0.5)
    with pytest.raises(MusicsteerError, match="not a toy corpus"):
        load_clips(tmp_path, "train")
    write_corpus(tmp_path / "c16k", rate=16000, seconds=0.5)
    with pytest.raises(MusicsteerError, match="16000 Hz, 1 channel.*32000 Hz mono"):
        load_clips(tmp_path / "c16k", "train")
