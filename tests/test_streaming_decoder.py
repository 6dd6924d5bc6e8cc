"""Streaming EnCodec decode against the one-shot decode, on the real 32 kHz architecture.

The tiny model's EnCodec barely listens to its codes (DESIGN §4), so matching it proves little. We
build the real EnCodec architecture (2-layer LSTM, real widths) with random weights instead, and
first assert that its output depends on the codes. Only the EnCodec is built: random:small would
also build a 420M decoder we do not need.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import EncodecConfig, EncodecModel

from musicsteer.engine.codec import decode_codes
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.loading import LoadedModel, load_model
from musicsteer.engine.streaming_decoder import StreamingConfig, StreamingDecoder

FRAMES = 1005  # 20.1 s: the SNR sequence, and the late chunks come after 1,000 frames
HOP = 640


def random_codes(k: int, frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (k, frames), generator=torch.Generator().manual_seed(seed))


def power_db(signal: np.ndarray, error: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(error**2)) / float(np.mean(signal**2)))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # on this shared 2-core CPU two spinning OpenMP threads ran these decodes up to 10x slower
    # under load; one thread keeps the test time and the early/late timing ratio steady
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_arch() -> SimpleNamespace:
    """The 32 kHz EnCodec of engine/loading.py's random models, wrapped like a LoadedModel."""
    torch.manual_seed(0)
    config = EncodecConfig(
        sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], codebook_size=2048,
        num_filters=64, hidden_size=128, num_lstm_layers=2, codebook_dim=128, use_causal_conv=False,
        normalize=False, audio_channels=1, norm_type="weight_norm", pad_mode="reflect", kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, num_residual_layers=1, compress=2,
        use_conv_shortcut=False, trim_right_ratio=1.0, chunk_length_s=None, overlap=None,
    )
    codec = EncodecModel(config).eval()
    with torch.no_grad():
        # fresh codebooks are all zero (the audio would ignore the codes), and random biases add
        # a DC level that dominates the output (measured: two code sequences only 15 dB apart)
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_()
        for name, param in codec.decoder.named_parameters():
            if "bias" in name:
                param.zero_()
    model = SimpleNamespace(audio_encoder=codec)
    lm = SimpleNamespace(model=model, sample_rate=32000, frame_rate=50, audio_channels=1, num_codebooks=4,
                         device=torch.device("cpu"), dtype=torch.float32)
    # FIRST: this decoder must listen to its codes, or the SNR below would prove nothing
    a, b = (decode_codes(lm, random_codes(4, 100, seed)) for seed in (1, 2))
    assert power_db(a, a - b) > -10.0, "test EnCodec ignores its codes"
    return lm


@pytest.fixture(scope="module")
def streamed(real_arch: SimpleNamespace) -> dict:
    """The default config fed one frame at a time, with each chunk's cost recorded."""
    codes = random_codes(4, FRAMES, seed=7)
    decoder = StreamingDecoder(real_arch)
    chunks, costs = [], []  # costs: (frames_in, frames decoded, ms, samples out) per chunk
    for i in range(FRAMES):
        out = decoder.push(codes[:, i])
        if out is not None:
            chunks.append(out)
            costs.append((decoder.frames_in, decoder.last_decode_frames, decoder.last_decode_ms, decoder.samples_out))
    pushed = np.concatenate(chunks, axis=1)
    tail = decoder.flush()
    return {"codes": codes, "pushed": pushed, "audio": np.concatenate([pushed, tail], axis=1),
            "costs": costs, "reference": decode_codes(real_arch, codes), "decoder": decoder}


def test_streamed_matches_one_shot(streamed: dict) -> None:
    audio, reference = streamed["audio"], streamed["reference"]
    assert audio.dtype == np.float32
    assert audio.shape == reference.shape == (1, FRAMES * HOP)
    assert streamed["decoder"].samples_out == FRAMES * HOP
    assert -power_db(reference, reference - audio) >= 30.0


def test_settled_audio_lags_by_exactly_the_lookahead(streamed: dict) -> None:
    decoder = streamed["decoder"]
    chunk = decoder.config.chunk_frames * HOP
    # the decoder's whole right reach: the first conv's 3 frames and the upsampler's 0.75 (and 2 samples)
    assert decoder.lookahead == decoder.reach == 2402
    for frames_in, _, _, samples_out in streamed["costs"]:  # each chunk ends `lookahead` before the codes' end
        assert samples_out == frames_in * HOP - decoder.lookahead
    assert streamed["costs"][0][0] == -(-(chunk + decoder.lookahead) // HOP)  # the first, as soon as it can
    steps = np.diff([samples for *_, samples in streamed["costs"]])
    assert set(steps) == {chunk}  # then a chunk at a time
    assert FRAMES * HOP - decoder.lookahead - chunk < streamed["pushed"].shape[1] <= FRAMES * HOP - decoder.lookahead


def test_cost_per_chunk_does_not_grow(streamed: dict) -> None:
    cfg = StreamingConfig()
    costs = streamed["costs"]
    first_conv_reach = 3  # frames of codes the k=7 first conv reads on either side
    bound = cfg.context_frames + cfg.chunk_frames + streamed["decoder"].lookahead_frames + first_conv_reach
    decoded = [frames for _, frames, *_ in costs]
    assert max(decoded) <= bound
    late = [(frames, ms) for frames_in, frames, ms, _ in costs if frames_in > 1000]
    assert late and all(frames == decoded[5] for frames, _ in late)  # same window early and late
    early_ms = np.median([ms for _, _, ms, _ in costs[1:21]])  # skip the first call's warm-up
    late_ms = np.median([ms for _, _, ms, _ in costs[-20:]])
    assert late_ms / early_ms < 2.0


def test_a_shorter_lookahead_emits_sooner_and_crossfades_its_seams(real_arch: SimpleNamespace,
                                                                   streamed: dict) -> None:
    """Below the reach the edge is approximate: each chunk comes out that much sooner, seams crossfaded."""
    decoder = StreamingDecoder(real_arch, StreamingConfig(chunk_frames=1, lookahead_samples=2322))
    codes = streamed["codes"][:, :200]
    outs = [decoder.push(codes[:, i]) for i in range(codes.shape[1])]
    first = next(i for i, pcm in enumerate(outs) if pcm is not None) + 1
    assert first == -(-(HOP + 2322) // HOP) and decoder.samples_out == 200 * HOP - 2322
    audio = np.concatenate([p for p in [*outs, decoder.flush()] if p is not None], axis=1)
    reference = decode_codes(real_arch, codes)
    assert audio.shape == reference.shape and -power_db(reference, reference - audio) >= 20.0
    with pytest.raises(MusicsteerError):
        decoder.set_lookahead(64)  # shorter than the crossfade it fades from


def test_irregular_batches_give_the_same_audio(real_arch: SimpleNamespace, streamed: dict) -> None:
    codes, decoder, out = streamed["codes"][:, :120], StreamingDecoder(real_arch), []
    sizes, at = [1, 3, 7, 2, 11, 5, 1, 13], 0
    while at < codes.shape[1]:
        size = sizes[len(out) % len(sizes)]
        got = decoder.push(codes[:, at : at + size])
        out.append(got if got is not None else np.zeros((1, 0), np.float32))
        at += size
    batched = np.concatenate(out, axis=1)
    np.testing.assert_allclose(batched, streamed["pushed"][:, : batched.shape[1]], atol=1e-6)
    assert batched.shape[1] + decoder.flush().shape[1] == 120 * HOP


def test_stateless_mode_needs_lstm_context(real_arch: SimpleNamespace) -> None:
    """Without the carried LSTM state the window restarts the LSTM from zero every chunk: still
    aligned and the right length, but only as good as its context (why stateful is the default)."""
    codes = random_codes(4, 150, seed=3)
    config = StreamingConfig(context_frames=1, stateful_lstm=False)
    decoder = StreamingDecoder(real_arch, config)
    audio = np.concatenate([x for x in (decoder.push(codes), decoder.flush()) if x is not None], axis=1)
    reference = decode_codes(real_arch, codes)
    assert audio.shape == reference.shape
    assert decoder.last_decode_frames <= config.context_frames + config.chunk_frames + decoder.lookahead_frames
    assert -power_db(reference, reference - audio) < 30.0


def test_real_loaded_model_path(tiny: LoadedModel) -> None:
    codes = random_codes(tiny.num_codebooks, 37, seed=5)
    decoder = StreamingDecoder(tiny)
    parts = [decoder.push(codes[:, i]) for i in range(codes.shape[1])] + [decoder.flush()]
    audio = np.concatenate([p for p in parts if p is not None], axis=1)
    reference = decode_codes(tiny, codes)
    assert audio.shape == reference.shape == (1, 37 * HOP)
    np.testing.assert_allclose(audio, reference, atol=1e-5 * max(1.0, float(np.abs(reference).max())))
    assert decoder.latency_ms == pytest.approx((2402 / HOP + 5) * 20.0)
    config = StreamingConfig(lookahead_samples=2 * HOP, chunk_frames=8, crossfade_samples=64)
    assert StreamingDecoder(tiny, config).latency_ms == pytest.approx(200.0)
    with pytest.raises(MusicsteerError):
        decoder.push(codes[:, 0])  # the stream has ended
    decoder.reset()
    with pytest.raises(MusicsteerError):
        decoder.push(codes[:2])  # wrong number of codebooks


def test_stereo_gives_two_channels() -> None:
    lm = load_model("tiny-stereo", "cpu", "float32")
    codes = random_codes(lm.num_codebooks, 23, seed=9)
    decoder = StreamingDecoder(lm)
    parts = [decoder.push(codes[:, :10]), decoder.push(codes[:, 10:]), decoder.flush()]
    audio = np.concatenate([p for p in parts if p is not None], axis=1)
    reference = decode_codes(lm, codes)
    assert audio.shape == reference.shape == (2, 23 * HOP)
    np.testing.assert_allclose(audio, reference, atol=1e-5 * max(1.0, float(np.abs(reference).max())))
