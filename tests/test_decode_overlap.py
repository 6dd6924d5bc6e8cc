"""The streaming decode runs on its own thread, overlapped with generation (engine/decode_worker.py):
frames cross over in order, the lead over playback stays bounded, and an error on either thread
stops the session, surfaces from run() and leaves a finalised recording. CPU, tiny model, null device."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf
import torch

from musicsteer.engine.control import Controls
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log

HOP = 640  # samples per frame: 32 kHz / 50 Hz


def session_for(tiny, **options: object) -> StreamingSession:
    return StreamingSession(Generator(tiny, Controls(prompt="rock", seed=5)),
                            StreamOptions(output_device="null", **options))


def watch_steps(session: StreamingSession, on_frame: Callable[[torch.Tensor], None] | None = None) -> list[int]:
    """Wrap gen.step: returns the list of thread idents it ran on, filled as it runs."""
    step, threads = session.gen.step, []

    def watched():
        threads.append(threading.get_ident())
        frame = step()
        if frame is not None and on_frame is not None:
            on_frame(frame.codes[0])
        return frame

    session.gen.step = watched
    return threads


def watch_pushes(session: StreamingSession, before: Callable[[int], None] | None = None) -> dict[str, list]:
    """Wrap decoder.push: records its thread, the codes it got and the samples it gave back."""
    push, seen = session.decoder.push, {"threads": [], "codes": [], "samples": []}

    def watched(codes):
        seen["threads"].append(threading.get_ident())
        seen["codes"].append(codes.clone())
        if before is not None:
            before(len(seen["codes"]) - 1)
        pcm = push(codes)
        seen["samples"].append(0 if pcm is None else pcm.shape[1])
        return pcm

    session.decoder.push = watched
    return seen


def test_decode_runs_on_its_own_thread_overlapped_in_order_with_none_lost(tiny, tmp_path) -> None:
    session = session_for(tiny, seconds=2.0, record=tmp_path / "o.wav")
    depth = session._decoding.depth
    generated: list[torch.Tensor] = []
    ahead = threading.Event()

    def on_frame(codes: torch.Tensor) -> None:
        generated.append(codes)
        if len(generated) > depth:
            ahead.set()

    overlapped: list[bool] = []

    def hold_first_frame(index: int) -> None:
        # While the decoder is still busy with frame 0, the generator completes `depth` more frames:
        # impossible if both ran on one thread (this wait would time out).
        if index == 0:
            overlapped.append(ahead.wait(timeout=20))

    step_threads = watch_steps(session, on_frame)
    pushes = watch_pushes(session, hold_first_frame)
    stats = session.run()

    assert overlapped == [True]
    assert len(set(step_threads)) == 1 and len(set(pushes["threads"])) == 1
    assert not set(step_threads) & set(pushes["threads"])
    assert threading.get_ident() not in set(step_threads) | set(pushes["threads"])
    assert len(generated) == 100  # 2 s at 50 frames/s
    assert len(pushes["codes"]) == 100
    assert all(torch.equal(a, b) for a, b in zip(generated, pushes["codes"], strict=True))
    audio, rate = sf.read(tmp_path / "o.wav")
    assert rate == 32000 and len(audio) == 100 * HOP  # flushed at the end: every frame's audio
    assert stats.played_seconds == pytest.approx(2.0, abs=0.05)
    assert stats.generation_rtf > 0 and stats.decode_rtf > 0
    assert stats.rtf == pytest.approx(min(stats.generation_rtf, stats.decode_rtf))
    assert set(session.status()) >= {"rtf", "generation_rtf", "decode_rtf"}


def test_decoder_error_stops_the_session_surfaces_and_keeps_the_recording(tiny, tmp_path) -> None:
    session = session_for(tiny, record=tmp_path / "e.wav")  # endless: only the error can end it

    def break_at_30(index: int) -> None:
        if index == 30:
            raise RuntimeError("decoder broke")

    pushes = watch_pushes(session, break_at_30)
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="decoder broke"):
        session.run()
    assert time.monotonic() - began < 20
    # generation stopped too: it can only have run ahead by the queue (and one frame in hand)
    assert session.generated_frames <= 31 + session._decoding.depth + 1
    audio, _ = sf.read(tmp_path / "e.wav")  # finalised: a readable WAV with everything decoded
    # everything decoded, in whole frames (a take holds frames; the last part of one is played, not kept)
    assert len(audio) == sum(pushes["samples"]) // HOP * HOP > 0 and np.isfinite(audio).all()
    assert read_log(tmp_path / "e.jsonl").end["frames"] * 640 == len(audio)  # the take's log: what it holds


def test_generation_error_surfaces_and_keeps_the_recording(tiny, tmp_path) -> None:
    session = session_for(tiny, record=tmp_path / "g.wav")
    step = session.gen.step

    def failing():
        if session.gen.step_index == 60:
            raise ValueError("step broke")
        return step()

    session.gen.step = failing
    with pytest.raises(ValueError, match="step broke"):
        session.run()
    audio, _ = sf.read(tmp_path / "g.wav")
    assert len(audio) == session.decoder.samples_out // HOP * HOP > 0  # what was decoded before the stop, in frames
    assert session._decoding.finished.is_set()


def test_stop_returns_promptly_while_generation_waits_on_a_full_queue(tiny) -> None:
    session = session_for(tiny)
    watch_pushes(session, lambda index: time.sleep(0.05))  # a decoder far slower than generation
    stopped_at: list[float] = []

    def stop_when_full() -> None:
        deadline = time.monotonic() + 30
        while not session._decoding._queue.full() and time.monotonic() < deadline:
            time.sleep(0.005)
        stopped_at.append(time.monotonic())
        session.stop()

    threading.Thread(target=stop_when_full, daemon=True).start()
    session.run()
    assert stopped_at and time.monotonic() - stopped_at[0] < 2.0
    assert session.error is None


def test_lead_over_playback_is_the_ring_plus_the_queue_plus_the_decoder_lookahead(tiny) -> None:
    session = session_for(tiny, buffer_seconds=0.3, prebuffer_seconds=0.1)
    cfg, ring = session.decoder.config, session.ring
    # frames generated but not yet played: the ring's capacity, the decoder's pending chunk and
    # lookahead (or a chunk of PCM waiting for ring space), the queue, and one frame in hand
    bound = ring.capacity + (cfg.chunk_frames + session.decoder.lookahead_frames + session._decoding.depth + 1) * HOP
    leads: list[int] = []  # in samples: exact integers (the bound is reached to the sample)

    def sample() -> None:
        while ring.frames_read < 2.0 * 32000:
            generated = session.generated_frames  # read first: a later read of frames_read only lowers the lead
            leads.append(generated * HOP - ring.frames_read)
            time.sleep(0.002)
        session.stop()

    threading.Thread(target=sample, daemon=True).start()
    session.run()
    assert max(leads) <= bound, (max(leads), bound)
    assert max(leads) >= 0.3 * 32000  # the bound was reached: generation was not merely slow


def test_an_error_before_the_threads_start_surfaces_as_itself(tiny, tmp_path) -> None:
    session = session_for(tiny, seconds=1.0, record=tmp_path / "s.wav")

    def no_start(prompt_codes: torch.Tensor | None = None) -> None:
        raise ValueError("cannot start")

    session.gen.start = no_start
    with pytest.raises(ValueError, match="cannot start"):  # not "cannot join thread before it is started"
        session.run()
    assert sf.info(str(tmp_path / "s.wav")).frames == 0  # a valid, empty take


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_runs_on_its_own_stream_beside_the_graph_and_loses_nothing(tmp_path) -> None:
    """On a GPU: every decoder chunk runs on the decode thread's own stream (not the generation thread's),
    the token loop on the captured graph, and every frame's audio reaches the take."""
    from musicsteer.engine.graph import GraphGenerator
    from musicsteer.engine.loading import load_model

    lm = load_model("tiny", "cuda", "float32")
    session = StreamingSession(GraphGenerator(lm, Controls(prompt="rock", seed=5)),
                               StreamOptions(output_device="null", seconds=2.0, record=tmp_path / "o.wav"))
    streams, push = [], session.decoder.push

    def watched(codes):
        streams.append(torch.cuda.current_stream())
        return push(codes)

    session.decoder.push = watched
    stats = session.run()
    worker = session._decoding.stream
    assert worker is not None and worker != torch.cuda.default_stream(lm.device)
    assert streams and all(s == worker for s in streams)
    assert session.gen.graph.capture and session.gen.graph.builds == 1
    audio, rate = sf.read(tmp_path / "o.wav")
    assert rate == 32000 and len(audio) == 100 * HOP
    assert stats.underrun_events == 0
