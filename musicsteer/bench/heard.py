"""Knob → heard for `musicsteer bench --heard SECONDS`: live sessions through a real, clocked output.

Each contender is a whole live session — generation, the streaming decoder, the ring and the output
device's own clock (`--output-device`: a PortAudio device such as a JACK server's `system`, or
`null`, paced by a monotonic clock) — with α changed every `every` seconds from another thread, as an
OSC client would. The engine times each change from its submission to the moment the first frame made
after it reaches the DAC (engine/latency.py). Contenders: the fixed one-second buffer (the baseline)
and `--buffer auto`, in the same run on the same model; the device block is play's own default
(`--blocksize auto`: engine/audio_out.py), so what is measured is what a performer gets.
"""

from __future__ import annotations

import threading

from musicsteer.engine.control import Controls
from musicsteer.engine.events import Change
from musicsteer.engine.graph import GENERATORS
from musicsteer.engine.loading import LoadedModel
from musicsteer.engine.params import PARAMS
from musicsteer.engine.session import StreamingSession, StreamOptions

BUFFERS: tuple[float | str, ...] = (1.0, "auto")  # the baseline first


def run_heard(lm: LoadedModel, seconds: float, step: str, output_device: str | None = "null",
              blocksize: int | str = PARAMS["blocksize"].default, every: float = 0.5) -> dict:
    """One live session per buffer setting; JSON-ready {"contenders": [...]} with each one's knob → heard
    median/p95 (ms), changes timed, underruns, rebuffers, xruns, the decoder chunk and the final lead."""
    contenders = []
    for buffer in BUFFERS:
        gen = GENERATORS[step](lm, Controls(prompt="lo-fi jazz with warm piano"))
        session = StreamingSession(gen, StreamOptions(seconds=seconds, output_device=output_device,
                                                      buffer_seconds=buffer, blocksize=blocksize))
        stop = threading.Event()

        def knobs(session: StreamingSession = session, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.wait(every):
                if session.ring.frames_read:  # from the first audio on, as a performer would
                    session.control.submit(Change("alpha", 0.1 + 0.1 * (i % 5)))
                    i += 1

        thread = threading.Thread(target=knobs, daemon=True)
        thread.start()
        stats = session.run()
        stop.set()
        thread.join()
        status = session.status()
        contenders.append({
            "buffer": buffer, "decode": step, "output_device": output_device or "default", "blocksize": blocksize,
            "device_block": session.blocksize,
            "chunk_frames": session.decoder.config.chunk_frames, "lead_s": status["lead"],
            "heard_median_ms": stats.heard.get("median_ms"), "heard_p95_ms": stats.heard.get("p95_ms"),
            "changes": stats.heard.get("changes", 0), "underruns": stats.underrun_events,
            "underrun_s": round(stats.underrun_seconds, 3), "rebuffers": stats.rebuffers, "xruns": stats.xruns,
            "played_s": round(stats.played_seconds, 2), "rtf": round(stats.rtf, 2),
        })
    return {"model": lm.name, "seconds": seconds, "every_s": every, "contenders": contenders}
