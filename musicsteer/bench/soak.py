"""A long live session on the null device, measured: the numbers a performer's machine must hold.

Time to first audio (session start to playback), the streaming decoder's cost per chunk over the
session (minute 1 against the last minute: it must not grow), resident memory over time (it must
stay flat: the cache, ring and decoder are bounded; codes and audio go to the sink and are dropped),
underruns and the generation speed.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from musicsteer.engine.control import Controls
from musicsteer.engine.graph import GENERATORS
from musicsteer.engine.loading import LoadedModel
from musicsteer.engine.session import StreamingSession, StreamOptions


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_soak(lm: LoadedModel, seconds: float, step: str, sample_every: float = 10.0) -> dict:
    """A null-device session of `seconds` through the token step `step` ("eager" or "graph": the
    command's --decode, resolved by graph.decode_step); the report (JSON-ready) names the step."""
    gen = GENERATORS[step](lm, Controls(prompt="lo-fi jazz with warm piano"))
    session = StreamingSession(gen, StreamOptions(seconds=seconds, output_device="null"))
    chunks: list[tuple[float, float]] = []  # (session seconds generated, decode ms)
    decoder = session.decoder
    push = decoder.push

    def timed_push(codes):
        out = push(codes)
        if out is not None:
            chunks.append((decoder.frames_in / lm.frame_rate, decoder.last_decode_ms))
        return out

    decoder.push = timed_push
    rss: list[tuple[float, float]] = []
    began = time.monotonic()
    first_audio: list[float] = []
    done = threading.Event()

    def sampler() -> None:
        while not done.wait(0.05):
            if not first_audio and session.ring.frames_read > 0:
                first_audio.append(time.monotonic() - began)
            if not rss or time.monotonic() - began - rss[-1][0] >= sample_every:
                rss.append((time.monotonic() - began, rss_mb()))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    stats = session.run()
    done.set()
    thread.join()
    rss.append((time.monotonic() - began, rss_mb()))

    def median_ms(lo: float, hi: float) -> float | None:
        values = [ms for t, ms in chunks if lo <= t < hi]
        return round(statistics.median(values), 2) if values else None

    after_warmup = [mb for t, mb in rss if t >= 60] or [mb for _, mb in rss]
    return {
        "model": lm.name, "decode": step, "seconds": seconds,
        "ttfa_s": round(first_audio[0], 3) if first_audio else None,
        "chunk_frames": decoder.config.chunk_frames,
        "decode_ms_minute_1": median_ms(0, 60), "decode_ms_last_minute": median_ms(seconds - 60, seconds + 1),
        "rss_mb_start": round(rss[0][1], 1), "rss_mb_after_1_min": round(after_warmup[0], 1),
        "rss_mb_end": round(rss[-1][1], 1), "rss_mb_max": round(max(mb for _, mb in rss), 1),
        "rss_samples": [(round(t, 1), round(mb, 1)) for t, mb in rss],
        "played_s": round(stats.played_seconds, 2), "underruns": stats.underrun_events,
        "underrun_s": round(stats.underrun_seconds, 3), "rtf": round(stats.rtf, 2),
        "windows": gen.frame_offset // max(1, gen.window - gen.keep) + 1,
    }
