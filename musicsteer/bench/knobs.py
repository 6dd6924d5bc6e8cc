"""Knob traffic for `musicsteer bench`: the steering automation every run shares, and knob → applied latency.

`automate_steering` is the one schedule of steering changes the benchmark and the graph tests
drive: α moves every token, the vector mix, the layer and the site every few tokens. Every change
is submitted with `at_step`, so a run is deterministic and its codes reproducible.

`knob_latency` measures what a performer waits for: another thread (standing in for OSC or MIDI)
submits α changes at seeded random moments while the generation thread steps freely; the latency
of each is from just before `submit` to the generation thread's `Applied` listener, which runs at
the token boundary where the change has been written into the steering tensors (on CUDA the
writes are queued: the kernels reading them follow on the device).
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from musicsteer.engine.events import Applied, Change, Event
from musicsteer.engine.generator import Frame, Generator
from musicsteer.engine.graph import GraphGenerator

if TYPE_CHECKING:
    from musicsteer.engine.control import Controls
    from musicsteer.engine.loading import LoadedModel
    from musicsteer.engine.vectors import SteeringVectors

class LateReader:
    """Steps a generator and reads each frame's codes one token late, as the streaming decoder does.
    On CUDA a frame's codes arrive asynchronously (`Frame.fetch`): reading them waits for that token
    on the device while the next one is already queued, so timed steps are throughput, and the host
    never runs more than a token or two ahead (nor do knob changes wait behind a deep queue)."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self._waiting: Frame | None = None

    def step(self) -> Frame | None:
        frame = self.gen.step()
        if frame is not None:
            if self._waiting is not None:
                _ = self._waiting.codes
            self._waiting = frame
        return frame


# Alphas the latency probe submits: distinct per change, so the applied callback can tell them apart.
_PROBE_ALPHA0, _PROBE_ALPHA_STEP = 0.25, 1e-3


def steering_mixes(labels: Sequence[str]) -> list[dict[str, float]]:
    """Three mixes the schedule cycles through: the first vector, an even blend, the second vector."""
    a, b = labels[0], labels[min(1, len(labels) - 1)]
    return [{a: 1.0}, {a: 0.5, b: 0.5}, {b: 1.0}]


def automate_steering(gen: Generator, steps: int, *, mixes: Sequence[dict[str, float]] | None = None,
                      mix_every: int = 5, layer_every: int = 7, site_every: int = 11) -> int:
    """Schedule steering changes for tokens 0 .. steps-1 of `gen`'s session; return how many.

    α changes every token; the mix every `mix_every`, the layer every `layer_every` and the site
    every `site_every` tokens (1 = every token). All of them reach a captured graph through
    in-place writes, so none may recapture it.
    """
    if gen.vectors is None:
        raise ValueError("automate_steering needs a generator with steering vectors")
    mixes = list(mixes) if mixes else steering_mixes(gen.vectors.labels)
    count = 0
    for i in range(steps):
        gen.control.submit(Change("alpha", 0.1 + 0.8 * abs(math.sin(0.37 * i))), at_step=i)
        count += 1
        if i % mix_every == 0:
            gen.control.submit(Change("mix", mixes[(i // mix_every) % len(mixes)]), at_step=i)
            count += 1
        if i % layer_every == 0:
            gen.control.submit(Change("layer", ((i // layer_every) % gen.dec.num_layers,)), at_step=i)
            count += 1
        if i % site_every == 0:
            gen.control.submit(Change("site", ("residual", "attention")[(i // site_every) % 2]), at_step=i)
            count += 1
    return count


def recapture_check(gen: GraphGenerator, tokens: int) -> dict[str, int]:
    """Run `tokens` tokens with α, mix, layer and site all changing on every token; count captures.

    The issue's goal is zero recaptures after the first capture, so `graph_builds` must be 1."""
    applied: list[int] = []
    gen.listeners.add(lambda event: applied.append(len(event.changes)) if isinstance(event, Applied) else None)
    submitted = automate_steering(gen, tokens, mix_every=1, layer_every=1, site_every=1)
    gen.start()
    reader = LateReader(gen)
    for _ in range(tokens):
        reader.step()
    return {"tokens": tokens, "graph_builds": gen.graph.builds, "changes_submitted": submitted,
            "changes_applied": sum(applied)}


def _nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank: an observed value, defined for any non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def knob_latency(gen: Generator, changes: int = 50, seed: int = 0) -> dict[str, float | int]:
    """Submit `changes` α changes from another thread while `gen` runs; time submit → applied.

    `gen` must have steering vectors and a mix so an α change moves something. The gaps between
    submissions are 0.5-2.5 of this session's own step time (seeded), so changes land at every
    phase of a token: just before a boundary (applied almost at once) or just after one (applied
    a whole step later).
    """
    if changes < 1:
        raise ValueError("changes must be >= 1")
    submitted: dict[float, tuple[float, int]] = {}  # alpha -> (perf_counter at submit, step index then)
    applied: dict[float, tuple[float, int]] = {}
    errors: list[Exception] = []

    def on_applied(event: Event) -> None:
        now = time.perf_counter()
        for change in event.changes if isinstance(event, Applied) else ():
            if change.param == "alpha":
                applied[change.value] = (now, event.step)

    gen.start()
    reader = LateReader(gen)
    reader.step()  # the prefill (and, for a graph, its capture): a one-off no knob should wait on
    stamps = [time.perf_counter()]
    # Past the delay pattern's first frame: from then on every step reads the frame before it, so
    # on CUDA these intervals are whole steps, not just their launches.
    for _ in range(8):
        reader.step()
        stamps.append(time.perf_counter())
    step_s = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    gen.listeners.add(on_applied)
    rng = random.Random(seed)
    gaps = [rng.uniform(0.5, 2.5) * step_s for _ in range(changes)]

    def submitter() -> None:
        try:
            for i, gap in enumerate(gaps):
                time.sleep(gap)
                alpha = _PROBE_ALPHA0 + i * _PROBE_ALPHA_STEP
                t, step = time.perf_counter(), gen.step_index
                gen.control.submit(Change("alpha", alpha))
                submitted[alpha] = (t, step)  # recorded after submit: an applied entry may come first
        except Exception as err:  # re-raised on the generation thread, which the caller waits on
            errors.append(err)

    thread = threading.Thread(target=submitter, name="knob-latency", daemon=True)
    thread.start()
    # Every submission is applied at the next boundary, so this ends one step after the last one.
    while thread.is_alive() or len(applied) < len(submitted):
        reader.step()
    thread.join()
    gen.listeners.remove(on_applied)
    if errors:
        raise errors[0]
    ms = [1000 * (applied[a][0] - t) for a, (t, _) in submitted.items()]
    tokens = [applied[a][1] - step for a, (_, step) in submitted.items()]
    return {"changes_submitted": len(submitted), "changes_applied": len(applied),
            "median_ms": statistics.median(ms), "p95_ms": _nearest_rank(ms, 0.95), "max_ms": max(ms),
            "max_tokens": max(tokens), "ms_per_step": 1000 * step_s}


def knob_latencies(lm: LoadedModel, controls: Controls, vectors: SteeringVectors, changes: int,
                   generators: dict[str, type[Generator]], seed: int = 0) -> dict[str, dict[str, float | int]]:
    """`knob_latency` for each generator class, by the name the report gives it (the bench's
    "engine" and "engine+graph"); `controls` should steer."""
    return {name: knob_latency(cls(lm, controls, vectors), changes, seed) for name, cls in generators.items()}
