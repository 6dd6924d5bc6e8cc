"""Model loading: the tiny model (built once, cached, loaded back through from_pretrained), its
repaired codebooks and decoder, the random-weight benchmark models, and one-line errors."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from musicsteer.engine import loading, tiny
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.loading import load_model, resolve_device, resolve_dtype
from musicsteer.engine.synthetic import synthetic_clip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # These tensors are tiny: on a shared, busy CPU two spinning OpenMP threads made generate()
    # 7x slower than one thread (1.4 s vs 0.2 s), so this module runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model() -> loading.LoadedModel:
    return load_model("tiny", device="cpu")  # the default cache: built on first use


def _codes(lm: loading.LoadedModel, audio: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model.audio_encoder.encode(torch.from_numpy(audio)[None, None], bandwidth=2.2)
    return out.audio_codes[0, 0]  # (codebooks, frames)


def test_tiny_builds_once_then_loads_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICSTEER_CACHE", str(tmp_path))
    builds: list[Path] = []
    real_save = tiny.save_tiny

    def counting_save(path, **kwargs):
        builds.append(Path(path))
        return real_save(path, **kwargs)

    monkeypatch.setattr(tiny, "save_tiny", counting_save)
    first = load_model("tiny", device="cpu")
    folder = tmp_path / f"tiny-v{tiny.RECIPE_VERSION}"
    marker_mtime = (folder / "musicsteer_tiny.json").stat().st_mtime_ns
    second = load_model("tiny", device="cpu")
    assert len(builds) == 1
    assert (folder / "musicsteer_tiny.json").stat().st_mtime_ns == marker_mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    for lm in (first, second):
        assert (lm.num_codebooks, lm.audio_channels, lm.sample_rate, lm.frame_rate) == (4, 1, 32000, 50)
        assert (lm.num_layers, lm.d_model, lm.codebook_size, lm.pad_token_id) == (2, 64, 2048, 2048)
        assert lm.max_positions == 2048 and lm.name == "tiny" and lm.device == torch.device("cpu")
        assert lm.dtype == torch.float32 and not lm.model.training
    assert first.fingerprint == second.fingerprint and first.fingerprint.startswith("tiny:")
    # same recipe, same weights
    for (key, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_concurrent_builds_leave_one_complete_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake, slow save_tiny: both threads build at once and race to rename into place
    monkeypatch.setenv("MUSICSTEER_CACHE", str(tmp_path))
    barrier = threading.Barrier(2)

    def slow_save(path, **kwargs):
        barrier.wait(timeout=10)
        (Path(path) / "musicsteer_tiny.json").write_text("{}")
        return Path(path)

    monkeypatch.setattr(tiny, "save_tiny", slow_save)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(tiny.ensure_tiny("tiny"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(results) == 2 and results[0] == results[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tiny-v{tiny.RECIPE_VERSION}"]


def test_tiny_stereo() -> None:
    lm = load_model("tiny-stereo", device="cpu")
    assert (lm.num_codebooks, lm.audio_channels, lm.sample_rate, lm.frame_rate) == (8, 2, 32000, 50)
    assert lm.model.config.audio_encoder.audio_channels == 1  # stereo MusicGen: one mono EnCodec per side
    assert lm.fingerprint != load_model("tiny", device="cpu").fingerprint


def test_processor_and_generate(tiny_model: loading.LoadedModel) -> None:
    processor = tiny_model.processor
    ids = processor(text=["classical piano with strings"], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 2 and (ids != processor.tokenizer.unk_token_id).all()
    inputs = processor(text=["classical piano"], return_tensors="pt")
    audio = tiny_model.model.generate(**inputs, do_sample=False, max_new_tokens=20)
    assert audio.shape[:2] == (1, 1) and audio.shape[2] > 0 and torch.isfinite(audio).all()
    gen = tiny_model.model.generation_config
    assert (gen.guidance_scale, gen.top_k, gen.max_length, gen.decoder_start_token_id) == (3.0, 250, 1500, 2048)


def test_different_audio_gives_different_codes(tiny_model: loading.LoadedModel) -> None:
    kinds = ("chord", "drums", "noise")
    mixture = np.concatenate([synthetic_clip(k, 4 / 3, 32000, seed=3) for k in kinds])
    codes = _codes(tiny_model, mixture)
    assert codes.shape == (4, 201)  # 4 codebooks at 2.2 kbps, 50 frames/s
    assert len(codes[0].unique()) >= 50  # measured 150 (a fresh EnCodec gives 1)
    hists = {k: torch.bincount(_codes(tiny_model, synthetic_clip(k, 4.0, 32000, seed=7))[0], minlength=2048)
             for k in kinds}
    for a, b in itertools.combinations(kinds, 2):
        total_variation = 0.5 * (hists[a] / hists[a].sum() - hists[b] / hists[b].sum()).abs().sum()
        assert total_variation > 0.5, (a, b)


def test_synthetic_clip_is_deterministic() -> None:
    a, b = synthetic_clip("drums", 1.0, 32000, seed=5), synthetic_clip("drums", 1.0, 32000, seed=5)
    assert a.dtype == np.float32 and a.shape == (32000,) and np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_clip("drums", 1.0, 32000, seed=6))
    assert 0 < np.abs(a).max() < 1


def test_decoder_listens_to_codes(tiny_model: loading.LoadedModel) -> None:
    # two random code sequences must decode to clearly different audio: measured +3 dB (independent
    # signals) after make_decoder_sensitive, -78 dB for the untouched random decoder
    assert tiny.decoder_sensitivity_db(tiny_model.model) > -10.0


def _one_line_error(call) -> str:
    with pytest.raises(MusicsteerError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_errors_are_one_line(tmp_path: Path) -> None:
    assert "not found" in _one_line_error(lambda: load_model("/nonexistent/folder", device="cpu"))
    (tmp_path / "notes.txt").write_text("not a model")
    assert "not a MusicGen" in _one_line_error(lambda: load_model(str(tmp_path), device="cpu"))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    assert "bert" in _one_line_error(lambda: load_model(str(other), device="cpu"))
    assert "tpu" in _one_line_error(lambda: resolve_device("tpu"))
    assert "int4" in _one_line_error(lambda: resolve_dtype("int4"))
    _one_line_error(lambda: load_model("random:huge", device="cpu"))
    if not torch.cuda.is_available():
        assert "CUDA" in _one_line_error(lambda: resolve_device("cuda"))


def test_device_and_dtype_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype("fp32") is torch.float32


def test_hub_id_fails_fast_offline() -> None:
    # On a user's machine with the hub this same call downloads facebook/musicgen-small; offline it
    # must fail at once with one line (huggingface_hub alone would retry for ~25 s first).
    if loading._hub_reachable():
        pytest.skip("the hub is reachable here: this call would download the model")
    start = time.monotonic()
    message = _one_line_error(lambda: load_model("facebook/musicgen-small", device="cpu"))
    assert time.monotonic() - start < 30
    assert "no network" in message and "--model tiny" in message


def test_hub_offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    _one_line_error(lambda: load_model("musicsteer-tests/no-such-model", device="cpu"))
    assert time.monotonic() - start < 30


def test_random_small_has_the_real_architecture() -> None:
    # random:small builds the full musicgen-small architecture in memory (~10-15 s on 2 CPU cores)
    start = time.monotonic()
    lm = load_model("random:small", device="cpu")
    elapsed = time.monotonic() - start
    assert lm.name == "random:small" and (lm.num_layers, lm.d_model, lm.num_codebooks) == (24, 1024, 4)
    decoder_params = sum(p.numel() for p in lm.model.decoder.parameters())
    assert abs(decoder_params / 1e6 - 419.6) < 1.0
    assert lm.model.config.text_encoder.d_model == 768 and lm.frame_rate == 50
    assert elapsed < 60
