"""`probe extract --ray [ADDRESS]`: the batches of a single-process run, run by a Ray cluster's actors.

This process plans, opens the cache and writes every shard (extract.fill, as without Ray); each actor
loads the model once and runs items of consecutive batches with extract.run_batches, the very code a
single process runs, so the cache is equal to the serial run's (tests/test_ray.py). An item carries
its audio files' BYTES, read here as it is sent: worker nodes need neither the data nor a shared file
system, only musicsteer and the model. --workers N decodes in N processes inside each actor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from musicsteer import cluster
from musicsteer.engine.errors import Unreadable, one_line
from musicsteer.engine.loading import device_spec, load_model, resolve_dtype

from . import dataset
from .extract import Extractor, Missing, Shard, cpu_threads, fill, run_batches

ITEMS_PER_ACTOR = 4  # items per actor over a run: fewer leaves actors idle at the end, more decodes
MAX_BATCHES = 16  # more often the files that straddle two items


@dataclass(frozen=True)
class Shipped:
    """A source as sent to an actor: its encoded bytes (what pipeline.FileDecodes decodes)."""

    file_id: str
    data: bytes

    def encoded(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class Unshipped:
    """A source this process could not read, sent as the one-line reason: the actor's decode reports it as
    that file's failure (marked missing, as in a single-process run), needing no access to the data."""

    file_id: str
    error: str

    def encoded(self) -> bytes:
        raise Unreadable(self.error)


def extract_on_ray(address: str, model: str, device: str, dtype: str, data: str, out: str,
                   sources: list[dataset.Source], skipped: list[dict[str, str]], segment_seconds: float,
                   prompt: str, batch: int, workers: int) -> dict:
    """`extract` with the forward passes on the cluster at `address` ("" = the local or found one)."""
    device = device_spec(device)  # the actors load the model: its options are checked here first, in one line
    resolve_dtype(dtype)
    with cluster.pool(partial(_load, model, device, dtype, prompt), 1 + workers, address, device) as pool:
        facts = cluster.one_model(pool)

        def results(batches: list[list[dataset.Segment]], plan: dataset.Plan):
            size = max(1, min(MAX_BATCHES, math.ceil(len(batches) / (ITEMS_PER_ACTOR * len(pool.actors)))))
            items = ((batches[i : i + size], _ship(batches[i : i + size], plan.sources), workers)
                     for i in range(0, len(batches), size))
            for done in pool.map(_run, items):
                yield from done

        return fill(facts, data, out, sources, skipped, segment_seconds, prompt, batch, results)


def _load(model: str, device: str, dtype: str, prompt: str) -> Extractor:
    """In each actor, once: the model (on the actor's GPU when it has one) and the prompt's encoding."""
    return Extractor(load_model(model, device, dtype), prompt)


def _run(extractor: Extractor, item: tuple) -> list[Shard | Missing]:
    batches, sources, workers = item
    with cpu_threads(extractor.lm):
        return list(run_batches(extractor, batches, sources, workers))


def _ship(batches: list[list[dataset.Segment]], sources: dict[str, dataset.Source]) -> dict:
    """The item's files as bytes; one this process cannot read goes as its reason (`Unshipped`). Only the
    file's own failures count: reading it (OSError) or a dataset row without audio (hf_data.row_audio's
    one error); anything else is a bug and ends the run."""
    shipped: dict[str, Shipped | Unshipped] = {}
    for file_id in dict.fromkeys(s.file_id for group in batches for s in group):
        try:
            encoded = sources[file_id].encoded()
            shipped[file_id] = Shipped(file_id, encoded if isinstance(encoded, bytes) else Path(encoded).read_bytes())
        except OSError as e:
            shipped[file_id] = Unshipped(file_id, f"cannot read audio file {file_id}: {one_line(e.strerror or e)}")
        except Unreadable as e:
            shipped[file_id] = Unshipped(file_id, str(e))
    return shipped
