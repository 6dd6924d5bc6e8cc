"""`eval --ray [ADDRESS]`: the plan's clip batches rendered by a Ray cluster's actors.

Each actor loads MusicGen once (the command's own loader, so --model, --device, --dtype, --quantize
and --threads mean what they mean without Ray) and renders whole batches with clips.render_clips, the
very code a single process runs; this process plans, sends each batch (with its source codes), and
saves each clip as it comes back (clips.make_clips). So the clips, the resume rule and every file in
OUT are a single-process run's, and worker nodes need only musicsteer and the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from musicsteer import cluster
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.graph import GENERATORS, decode_step
from musicsteer.engine.loading import LoadedModel, ModelFacts
from musicsteer.engine.vectors import SteeringVectors

from .clips import Item, Render, Rendered, render_clips
from .protocol import Protocol


@dataclass
class ClipWorker:
    """An actor's state: its model and what every batch shares."""

    lm: LoadedModel
    vectors: SteeringVectors
    protocol: Protocol
    step: str  # the token step --decode chose on this actor's device


@contextmanager
def ray_render(address: str, load_model: Callable[[], LoadedModel], vectors: SteeringVectors, protocol: Protocol,
               decode: str, device: str = "auto") -> Iterator[tuple[ModelFacts, str, Render]]:
    """(the actors' model, their token step, a `Render` that runs items on them), while the actors live.
    `device`: the command's --device ("cpu" places the actors by CPUs on a cluster with GPUs)."""
    with cluster.pool(partial(_load, load_model, vectors, protocol, decode), address=address, device=device) as pool:
        facts = cluster.one_model(pool)
        steps = set(pool.each(_step))
        if len(steps) > 1:
            raise MusicsteerError(f"the Ray actors chose different token steps ({', '.join(sorted(steps))}) "
                                  "for --decode auto: give --decode eager or graph")

        def render(items: list[Item]) -> Iterator[tuple[int, Rendered]]:
            yield from pool.map(_render, items)

        yield facts, steps.pop(), render


def _load(load_model: Callable[[], LoadedModel], vectors: SteeringVectors, protocol: Protocol,
          decode: str) -> ClipWorker:
    lm = load_model()
    vectors.check_model(lm.num_layers, lm.d_model, lm.name)
    return ClipWorker(lm, vectors, protocol, decode_step(decode, lm.device))


def _step(worker: ClipWorker, _: object) -> str:
    return worker.step


def _render(worker: ClipWorker, item: Item) -> tuple[int, Rendered]:
    number, jobs, prompt_codes = item
    return number, render_clips(worker.lm, worker.vectors, jobs, worker.protocol, GENERATORS[worker.step],
                                prompt_codes)
