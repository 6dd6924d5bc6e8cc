"""A long live session on the null device, measured: the numbers a performer's machine must hold.

Time to first audio (session start to playback), the streaming decoder's cost per chunk over the
session (minute 1 against the last minute: it must not grow), resident memory over time (it must
stay flat: the cache, ring and decoder are bounded; codes and audio go to the sink and are dropped),
underruns and the generation speed.

With `knob_rate` (`bench --soak S --knob-rate HZ`): alpha is moved that many times a second over real OSC
(a UDP client to the session's OscServer, as a performer's controller), and a take is started over
OSC a minute before the end. The session must then still hold flat memory (the changes it keeps are
bounded by a window: engine/takes.py), the take's log must begin at the last window slide before it
(its checkpoint and only the changes since), and `render --replay` of it must give the live codes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from musicsteer.engine.control import Controls
from musicsteer.engine.graph import GENERATORS
from musicsteer.engine.loading import LoadedModel
from musicsteer.engine.session import StreamingSession, StreamOptions


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_soak(lm: LoadedModel, seconds: float, step: str, sample_every: float = 10.0, knob_rate: float = 0.0,
             folder: str | Path | None = None) -> dict:
    """A null-device session of `seconds` through the token step `step` ("eager" or "graph": the
    command's --decode, resolved by graph.decode_step); the report (JSON-ready) names the step.
    knob_rate: alpha changes a second over OSC, and a take a minute before the end, replayed after
    (its files go to `folder`, else a temporary one)."""
    gen = GENERATORS[step](lm, Controls(prompt="lo-fi jazz with warm piano"))
    folder = Path(folder or tempfile.mkdtemp(prefix="musicsteer-soak-"))
    take_at = max(1.0, seconds - 60.0)
    session = StreamingSession(gen, StreamOptions(seconds=seconds, output_device="null", record_dir=folder),
                               keep_codes=int((seconds - take_at + 30) * lm.frame_rate) if knob_rate else False)
    knobs = _Knobs(session, knob_rate, take_at) if knob_rate else None
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
    try:
        stats = session.run()
    finally:
        if knobs is not None:
            knobs.close()
    done.set()
    thread.join()
    rss.append((time.monotonic() - began, rss_mb()))

    def median_ms(lo: float, hi: float) -> float | None:
        values = [ms for t, ms in chunks if lo <= t < hi]
        return round(statistics.median(values), 2) if values else None

    after_warmup = [mb for t, mb in rss if t >= 60] or [mb for _, mb in rss]
    knob_report = knobs.report(session, lm, folder) if knobs is not None else {}
    return {**knob_report,
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
        "rss_growth_pct": round(100 * (rss[-1][1] - after_warmup[0]) / after_warmup[0], 2),
    }


class _Knobs:
    """A performer over real OSC: alpha `rate` times a second, /musicsteer/record/start at `take_at` s played."""

    def __init__(self, session: StreamingSession, rate: float, take_at: float) -> None:
        from pythonosc.udp_client import SimpleUDPClient

        from musicsteer.controllers.osc import OscServer

        self.server = OscServer(session, port=0, status_interval=1.0)
        self.server.start()
        self.client = SimpleUDPClient(*self.server.address)
        self.sent, self.take_sent = 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(session, rate, take_at), daemon=True)
        self._thread.start()

    def _run(self, session: StreamingSession, rate: float, take_at: float) -> None:
        origin = time.monotonic()
        while not self._stop.wait(max(0.0, origin + self.sent / rate - time.monotonic())):
            self.client.send_message("/musicsteer/alpha", 0.1 + 0.8 * ((self.sent * 37) % 100) / 100)
            self.sent += 1
            if self.take_sent is None and session.stats().played_seconds >= take_at:
                self.client.send_message("/musicsteer/record/start", "late.wav")
                self.take_sent = round(session.stats().played_seconds, 2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.stop()

    def report(self, session: StreamingSession, lm: LoadedModel, folder: Path) -> dict:
        """The late take: its log's size and reach, and whether `render --replay` gives the live codes."""
        from musicsteer.engine.session_log import read_log

        log_path = folder / "late.jsonl"
        if not log_path.exists():
            return {"knob_changes_sent": self.sent, "take": None}
        log = read_log(log_path)
        codes_out = folder / "late-replayed.npy"
        # In a fresh process, as a performer replays a take (and free of this one's half-hour of state).
        replayed = subprocess.run([sys.executable, "-m", "musicsteer", "render", "--replay", str(log_path), "--device",
                                   str(lm.device), "--out", str(folder / "late-replayed.wav"), "--codes-out",
                                   str(codes_out)], capture_output=True, text=True)
        code = replayed.returncode
        live = np.stack([c.numpy() for c in session.codes], axis=-1)
        first = log.start_step - session.codes_start
        live = live[:, first: first + log.end["frames"]] if log.end else live[:, first:]
        exact = code == 0 and first >= 0 and np.array_equal(np.load(codes_out), live)
        return {"knob_rate_hz": round(self.sent / max(session.stats().played_seconds, 1e-9), 2),
                "knob_changes_sent": self.sent, "changes_kept_at_end": len(session.applied),
                "take": {"started_at_s": self.take_sent, "start_frame": log.start_step,
                         "resumes_from_step": log.resume.step if log.resume is not None else None,
                         "log_lines": len(log_path.read_text().splitlines()),
                         "log_bytes": log_path.stat().st_size, "log_changes": len(log.changes),
                         "log_changes_before_take": sum(s < log.start_step for s, _ in log.changes),
                         "frames": log.end["frames"] if log.end else None, "replay_exact": bool(exact),
                         "replay_error": replayed.stderr.strip().splitlines()[-1][-300:] if code else None,
                         "header": {k: v for k, v in json.loads(log_path.read_text().splitlines()[0]).items()
                                    if k in ("format", "take")}}}
