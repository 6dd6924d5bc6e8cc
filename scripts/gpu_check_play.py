"""scripts/gpu-check's play step: `musicsteer play` as a performer runs it, knobs turned from an OSC client.

Runs `musicsteer play --output-device null --meter` in this process (musicsteer.cli.main, the real
command) while a thread sends α, the mix and the layer over OSC every token (20 ms) and times each α
from its datagram to the engine's echo of it (/musicsteer/changed, sent when the change is applied at a
token boundary): knob → applied, as the performer's surface sees it. Watched, not changed: the session's
final figures (underruns, rtf of each thread), its graph's builds and whether a capture fell back, and
the device time of every token step (generation stream) and decoder chunk (the decode thread's stream),
from CUDA events (wall clock on a CPU), whose overlap shows the decode running beside generation.

  python3 scripts/gpu_check_play.py --model random:small --device cuda --dtype bfloat16 --seconds 30 --json F
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from musicsteer.cli import main as musicsteer
from musicsteer.engine import loading
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession
from musicsteer.engine.streaming_decoder import StreamingDecoder
from musicsteer.engine.vectors import SteeringVectors

TOKEN_S = 0.02  # a token at real time (50 frames/s): the knobs move this often
LABELS = ("a", "b", "c")


def model_shape(name: str) -> tuple[int, int]:
    """(layers, d_model) of a model, without building a random one twice."""
    if name.startswith("random:"):
        hidden, layers, _, _ = loading._RANDOM_SIZES[name.removeprefix("random:").partition("-")[0]]
        return layers, hidden
    lm = loading.load_model(name, "cpu")
    return lm.num_layers, lm.d_model


class Spans:
    """(start, end) of each call of a method, in seconds from the first: device time (CUDA events on the
    calling thread's current stream) on CUDA, wall time elsewhere."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.pairs, self.lock = cuda, [], threading.Lock()

    def wrap(self, method):  # noqa: ANN001, ANN201
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = self._mark()
            try:
                return method(*args, **kwargs)
            finally:
                with self.lock:
                    self.pairs.append((start, self._mark()))
        return timed

    def _mark(self):  # noqa: ANN202
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, origin) -> list[tuple[float, float]]:  # noqa: ANN001
        if not self.cuda:
            return [(a - origin, b - origin) for a, b in self.pairs]
        torch.cuda.synchronize()
        return [(origin.elapsed_time(a) / 1000, origin.elapsed_time(b) / 1000) for a, b in self.pairs]


def overlap(decode: list[tuple[float, float]], generate: list[tuple[float, float]]) -> dict:
    """How much of the decoder's time ran while a token step was also running (both lists sorted by start)."""
    busy_decode = sum(b - a for a, b in decode)
    busy_generate = sum(b - a for a, b in generate)
    shared, j = 0.0, 0
    for a, b in decode:
        while j < len(generate) and generate[j][1] <= a:
            j += 1
        k = j
        while k < len(generate) and generate[k][0] < b:
            shared += max(0.0, min(b, generate[k][1]) - max(a, generate[k][0]))
            k += 1
    return {"decode_busy_s": busy_decode, "generation_busy_s": busy_generate, "shared_s": shared,
            "of_decode": shared / busy_decode if busy_decode else 0.0,
            "of_generation": shared / busy_generate if busy_generate else 0.0,
            "chunks": len(decode), "steps": len(generate)}


class Knobs(threading.Thread):
    """Subscribes to the engine's OSC feedback, then moves α, the mix and the layer every token."""

    def __init__(self, port: int, layers: int, seconds: float) -> None:
        super().__init__(name="gpu-check-knobs", daemon=True)
        self.target, self.layers, self.seconds = ("127.0.0.1", port), layers, seconds
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.005)
        self.sent: dict[float, float] = {}  # alpha value -> when sent
        self.applied_ms: list[float] = []
        self.counts = {"alpha": 0, "mix": 0, "layer": 0, "changed": 0, "errors": 0, "status": 0}
        self.errors: list[str] = []
        self.stop = threading.Event()

    def send(self, address: str, *args: object) -> None:
        builder = OscMessageBuilder(f"/musicsteer/{address}")
        for arg in args:
            builder.add_arg(arg)
        self.sock.sendto(builder.build().dgram, self.target)

    def drain(self) -> None:
        while True:
            try:
                data, _ = self.sock.recvfrom(65536)
            except (TimeoutError, BlockingIOError):
                return
            now = time.perf_counter()
            try:
                message = OscMessage(data)
            except Exception:  # noqa: BLE001 - a bundle or a malformed reply: not ours to time
                continue
            address, args = message.address, list(message.params)
            if address == "/musicsteer/status":
                self.counts["status"] += 1
            elif address == "/musicsteer/error":
                self.counts["errors"] += 1
                self.errors.append(str(args)[:200])
            elif address == "/musicsteer/changed":
                self.counts["changed"] += 1
                if args and args[0] == "alpha" and len(args) > 1:
                    sent = self.sent.pop(round(float(args[1]), 4), None)
                    if sent is not None:
                        self.applied_ms.append((now - sent) * 1000)

    def run(self) -> None:
        began = time.perf_counter()
        while self.counts["status"] == 0 and not self.stop.is_set():  # until the session answers
            if time.perf_counter() - began > 600:
                return
            self.send("subscribe")
            time.sleep(0.2)
            self.drain()
        end = time.perf_counter() + self.seconds - 1.0
        token = 0
        while time.perf_counter() < end and not self.stop.is_set():
            token += 1
            alpha = round(0.1 + (token % 800) / 1000, 4)
            self.sent[alpha] = time.perf_counter()
            self.send("alpha", alpha)
            weight = 0.25 + 0.5 * (token % 2)
            self.send("mix", LABELS[0], weight, LABELS[1], 1.0 - weight)
            self.send("layer", token % self.layers)
            self.counts["alpha"] += 1
            self.counts["mix"] += 1
            self.counts["layer"] += 1
            deadline = time.perf_counter() + TOKEN_S
            while time.perf_counter() < deadline:
                self.drain()
        settle = time.perf_counter() + 0.5
        while time.perf_counter() < settle:
            self.drain()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    layers, width = model_shape(args.model)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-play-"))
    generator = torch.Generator().manual_seed(0)
    vectors = SteeringVectors.create({label: torch.randn(layers, width, generator=generator) for label in LABELS},
                                     model=args.model, method="random", best_layer=layers // 2)
    vectors_file = vectors.save(work / "vectors.safetensors")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free UDP port for the engine's OSC
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    cuda = args.device.startswith("cuda")
    steps, chunks = Spans(cuda), Spans(cuda)
    Generator.step = steps.wrap(Generator.step)
    StreamingDecoder.push = chunks.wrap(StreamingDecoder.push)
    seen: dict = {}
    run = StreamingSession.run

    def watched_run(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["session"] = self
        seen["origin"] = steps._mark()
        seen["stats"] = run(self, *a, **kw)
        return seen["stats"]

    StreamingSession.run = watched_run
    knobs = Knobs(port, layers, args.seconds)
    knobs.start()
    # --decode graph: what auto picks on CUDA, named so a CPU dry run takes the same (uncaptured) static step.
    argv = ["play", "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--decode", "graph",
            "--seconds", str(args.seconds), "--output-device", "null", "--meter", "--vectors", str(vectors_file),
            "--steer", LABELS[0], "--alpha", "0.3", "--osc-port", str(port), "--no-status", "--prompt", "lo-fi jazz"]
    began = time.perf_counter()
    code = musicsteer(argv)
    wall = time.perf_counter() - began
    knobs.stop.set()
    knobs.join(5)
    report: dict = {"argv": argv, "exit_code": code, "wall_s": wall}
    session, stats = seen.get("session"), seen.get("stats")
    if stats is not None:
        report["stats"] = {k: v for k, v in vars(stats).items() if isinstance(v, int | float | str | dict | None)}
    if session is not None:
        graph = getattr(session.gen, "graph", None)
        report["decode_step"] = "graph" if graph is not None else "eager"
        report["graph_builds"] = None if graph is None else graph.builds
        report["graph_captured"] = None if graph is None else graph.capture
        report["graph_fallback"] = None if graph is None else graph.fallback
        worker = session._decoding
        report["decode_stream"] = None if worker.stream is None else str(worker.stream)
        origin = seen["origin"]
        report["overlap"] = overlap(sorted(chunks.seconds(origin)), sorted(steps.seconds(origin)))
        report["overlap"]["clock"] = "CUDA events (device time)" if cuda else "wall clock"
    applied = sorted(knobs.applied_ms)
    report["knobs"] = {**knobs.counts, "alpha_timed": len(applied), "errors_seen": knobs.errors[:5]}
    if applied:
        report["knob_to_applied_ms"] = {"median": statistics.median(applied),
                                        "p95": applied[min(len(applied) - 1, int(0.95 * len(applied)))],
                                        "max": applied[-1], "count": len(applied)}
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report.get(k) for k in ("exit_code", "graph_builds", "knob_to_applied_ms", "overlap")},
                     default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
