"""A continued take (`--init-audio`) is the one-shot decode of prompt + continuation from its first
sample: the streaming decoder is primed with the prompt's frames instead of starting cold. And the
end of a take is played whole when the device runs at another rate (the resampler's tail).

Real decodes throughout: the real 32 kHz EnCodec architecture with random weights (from
test_streaming_decoder), the cached tiny models, and a clocked JACK dummy device at 44.1 kHz.
"""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from jack import jack_server
from test_streaming_decoder import power_db, random_codes, real_arch  # noqa: F401 - real_arch: a fixture

from musicsteer.engine.codec import decode_codes
from musicsteer.engine.control import Controls
from musicsteer.engine.decode_worker import DecodeWorker
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator
from musicsteer.engine.loading import LoadedModel, load_model
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.streaming_decoder import StreamingDecoder

HOP = 640  # samples per frame: 32 kHz / 50 Hz
FIRST = 3200  # the first 100 ms of the continuation, where a cold decoder's seam is
CONTINUATION = 60  # frames: 1.2 s


def model_named(request: pytest.FixtureRequest, name: str) -> LoadedModel | SimpleNamespace:
    """A module fixture by name (the real architecture, the cached tiny model), or load_model's model."""
    return request.getfixturevalue(name) if name in ("real_arch", "tiny") else load_model(name, "cpu", "float32")


def snr_db(reference: np.ndarray, audio: np.ndarray) -> float:
    return -power_db(reference, reference - audio)


def continued(lm: LoadedModel | SimpleNamespace, prompt: torch.Tensor | None,
              continuation: torch.Tensor) -> tuple[np.ndarray, StreamingDecoder]:
    """Stream the continuation one frame at a time, as the session's decode thread does, after
    priming with `prompt` (None: a cold decoder); returns all its audio and the decoder."""
    decoder = StreamingDecoder(lm)
    if prompt is not None:
        decoder.prime(prompt)
    parts = [decoder.push(continuation[:, i]) for i in range(continuation.shape[1])] + [decoder.flush()]
    return np.concatenate([p for p in parts if p is not None], axis=1), decoder


@pytest.mark.parametrize(("model", "prompt_frames"), [
    ("real_arch", 50), ("real_arch", 2), ("tiny", 50), ("tiny", 7), ("tiny-stereo", 23),
])
def test_continuation_matches_one_shot_from_its_first_sample(request, model: str, prompt_frames: int) -> None:
    lm = model_named(request, model)
    codes = random_codes(lm.num_codebooks, prompt_frames + CONTINUATION, seed=11)
    prompt, continuation = codes[None, :, :prompt_frames], codes[:, prompt_frames:]  # the session's (1, K, F)
    reference = decode_codes(lm, codes)[:, prompt_frames * HOP :]  # render --replay's audio past the prompt
    audio, decoder = continued(lm, prompt, continuation)
    cold, _ = continued(lm, None, continuation)
    seam = {name: (snr_db(reference[:, :FIRST], x[:, :FIRST]), snr_db(reference, x),
                   float(np.abs(reference[:, :FIRST] - x[:, :FIRST]).max())) for name, x in (("primed", audio),
                                                                                           ("cold", cold))}
    print(f"{model}, {prompt_frames}-frame prompt (rms {np.sqrt(np.mean(reference**2)):.3f}): " + "; ".join(
        f"{name}: first 100 ms {a:.1f} dB, whole {b:.1f} dB, max |diff| in 100 ms {d:.2g}"
        for name, (a, b, d) in seam.items()))
    assert audio.shape == reference.shape == (lm.audio_channels, CONTINUATION * HOP)
    # only the continuation is counted: the session reports samples_out as generated audio
    assert decoder.samples_out == CONTINUATION * HOP and decoder.frames_in == CONTINUATION
    first_db, whole_db, _ = seam["primed"]
    assert first_db >= 30.0 and whole_db >= 30.0
    assert seam["cold"][0] < 20.0  # the seam a cold decoder leaves: what priming removes


def test_the_first_chunk_after_priming_is_on_the_usual_schedule(tiny) -> None:
    """Sample-aligned and no later than a cold stream's: chunk + lookahead frames after the prompt."""
    codes = random_codes(tiny.num_codebooks, 40, seed=3)
    decoder = StreamingDecoder(tiny)
    decoder.prime(codes[:, :20])
    sizes = [0 if (pcm := decoder.push(codes[:, 20 + i])) is None else pcm.shape[1] for i in range(20)]
    chunk, lookahead = decoder.config.chunk_frames * HOP, decoder.lookahead
    first = -(-(chunk + lookahead) // HOP)  # frames pushed when the first chunk comes out: a chunk settled
    assert sizes[: first - 1] == [0] * (first - 1) and sizes[first - 1] == first * HOP - lookahead
    assert sum(sizes) + decoder.flush().shape[1] == 20 * HOP


def test_priming_never_upsamples_the_prompt_and_runs_the_lstm_once(real_arch) -> None:  # noqa: F811
    """The cost of a long prompt: the upsampler (most of a decode's time) runs on none of its
    frames, and the LSTM, which must see every frame to be exact, runs over all of them in one call."""
    decoder = StreamingDecoder(real_arch)
    calls: dict[str, list[int]] = {"lstm": [], "upsampler": []}
    decoder._lstm.register_forward_hook(lambda _m, args, _o: calls["lstm"].append(args[0].shape[0]))
    upsample = decoder._post  # a plain function (engine/seanet.py): wrapped to count its calls
    decoder._post = lambda x: (calls["upsampler"].append(x.shape[-1]), upsample(x))[1]
    frames = 500  # a 10 s prompt
    decoder.prime(random_codes(4, frames, seed=2))
    assert calls == {"lstm": [frames - 3], "upsampler": []}  # up to where the first conv reads past the prompt
    assert decoder.samples_out == decoder.frames_in == 0


def test_the_decode_thread_primes_before_the_first_frame(tiny) -> None:
    """DecodeWorker.prime: the session's way in (the decoder is primed on the decode thread, on its
    CUDA stream where it has one), before any frame and never after start()."""
    codes = random_codes(tiny.num_codebooks, 20 + CONTINUATION, seed=4)
    stop, pcm, errors = threading.Event(), [], []
    worker = DecodeWorker(StreamingDecoder(tiny), pcm.append, stop.set, stop, errors.append, depth=5)
    worker.prime(codes[None, :, :20])
    worker.start()
    for i in range(20, codes.shape[1]):
        assert worker.put(SimpleNamespace(codes=codes[None, :, i]))  # a Frame: batch row 0 is decoded
    worker.close()
    assert worker.finished.wait(60) and not errors
    reference = decode_codes(tiny, codes)[:, 20 * HOP :]
    assert snr_db(reference, np.concatenate(pcm, axis=1)) >= 30.0
    assert worker.prime_seconds > 0
    with pytest.raises(RuntimeError):
        worker.prime(codes[None, :, :20])


def test_prime_forgets_an_earlier_stream_and_checks_shapes(tiny) -> None:
    codes = random_codes(tiny.num_codebooks, 30, seed=8)
    used = StreamingDecoder(tiny)
    used.push(codes)
    used.flush()
    used.prime(codes[:, :12])  # after a flushed stream: a new one, as if freshly built
    fresh = StreamingDecoder(tiny)
    fresh.prime(codes[:, :12])
    np.testing.assert_array_equal(used.push(codes[:, 12:]), fresh.push(codes[:, 12:]))
    with pytest.raises(MusicsteerError):
        fresh.prime(codes[:2])  # wrong number of codebooks
    with pytest.raises(MusicsteerError):
        fresh.prime(codes[None, None])


def test_a_live_take_from_a_prompt_is_the_replay_past_the_prompt(tiny, tmp_path) -> None:
    """The issue's case end to end: a live take that continues an audio prompt holds the same audio as
    `render --replay` of it (one-shot decode of prompt + continuation) past the prompt, from its first
    sample; a cold decoder missed by 0.29 in the first 100 ms against an RMS of 0.09."""
    prompt = random_codes(tiny.num_codebooks, 40, seed=21)[None]  # (1, K, F): as encode_audio gives
    take = tmp_path / "continued.wav"
    session = StreamingSession(Generator(tiny, Controls(prompt="rock", seed=5)),
                               StreamOptions(seconds=1.0, output_device="null", record=take),
                               prompt_codes=prompt, keep_codes=True)
    session.run()
    audio = sf.read(take, dtype="float32", always_2d=True)[0].T
    codes = torch.cat([prompt[0], torch.stack(session.codes, dim=-1)], dim=-1)
    reference = decode_codes(tiny, codes)[:, prompt.shape[-1] * HOP :]
    first, whole = snr_db(reference[:, :FIRST], audio[:, :FIRST]), snr_db(reference, audio)
    print(f"live take vs replay: first 100 ms {first:.1f} dB, whole {whole:.1f} dB, "
          f"max |diff| in 100 ms {np.abs(reference[:, :FIRST] - audio[:, :FIRST]).max():.2g}")
    assert audio.shape == reference.shape == (1, 50 * HOP)
    assert first >= 30.0 and whole >= 30.0


def test_a_session_at_44_1_khz_plays_the_last_samples(tiny) -> None:
    """2.00 s of the model at 32 kHz through soxr to a 44.1 kHz device: every frame reaches it,
    the resampler's tail included. The whole take is queued before the device starts (prebuffer
    longer than the take), so neither a slow CPU nor the start-up can drop or delay anything."""
    seconds, rate = 2.0, 44100
    with jack_server(rate):
        session = StreamingSession(Generator(tiny, Controls(prompt="rock", seed=5)),
                                   StreamOptions(seconds=seconds, output_device="system", buffer_seconds=3.0,
                                                 prebuffer_seconds=3.0))
        assert session.sink.resampling and session.ring.sample_rate == rate
        stats = session.run()
    played = session.ring.frames_read
    print(f"44.1 kHz session: {played} device frames for {seconds} s (expected {round(seconds * rate)}), "
          f"{stats.underrun_events} underruns")
    assert session.decoder.samples_out == round(seconds * 32000)
    assert math.isclose(played, round(seconds * rate), abs_tol=4)
    assert stats.underrun_events == 0
