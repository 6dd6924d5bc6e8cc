"""Decoding the planned files for `probe extract`, in the main process or in worker processes.

`decoded(jobs, ...)` yields one `Decoded` per file, IN THE ORDER GIVEN, whatever --workers is: the
rows and shards an extraction writes are the same for every worker count. A job is a file and its
planned segments; the file is decoded, mixed and resampled (engine/audio_io.decode_audio), cut into
those segments and, given `prepare`, each segment is turned into what the model reads (its EnCodec
codes, when the model is on the CPU: the encode is CPU work either way, so N processes run it beside
the forward instead of the main process running it between forwards). With workers > 0 a torch
DataLoader (batch_size=None: one file per item; a sequential sampler keeps the order) runs this in N
forked processes while the model's forward stays in the main process. Memory is bounded: each worker
holds at most PREFETCH files ahead of the model, so N x PREFETCH files are in flight, never the collection.

A file that does not decode (its header read at plan time, its data does not), or decodes shorter
than its planned segments, is not an error of the run: its `Decoded` carries the one-line reason and
no segments, and the caller skips it. A worker that dies (killed, out of memory) or fails on something
else ends the run as one MusicsteerError line; the shards already written stay, so the same command resumes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from musicsteer.engine.audio_io import decode_audio
from musicsteer.engine.errors import MusicsteerError, Unreadable, one_line

from .dataset import Segment, Source

PREFETCH = 2  # decoded files each worker keeps ready
Job = tuple[Source, list[Segment]]  # a file and its planned segments, in row order
Prepare = Callable[[np.ndarray], Any]  # a segment's audio (channels, samples) -> what the model reads


@dataclass
class Decoded:
    file_id: str
    # one per planned segment, in order: its audio (channels, length) float32 at the model's rate, or
    # what `prepare` made of it; None when the file failed
    segments: list[Any] | None
    error: str | None = None  # one line: why the file gives no segments


class FileDecodes(Dataset):
    """Jobs -> Decoded, one file per item (what each DataLoader worker runs)."""

    def __init__(self, jobs: Sequence[Job], sample_rate: int, channels: int, prepare: Prepare | None = None) -> None:
        self.jobs, self.sample_rate, self.channels, self.prepare = list(jobs), sample_rate, channels, prepare

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> Decoded:
        source, segments = self.jobs[i]
        try:
            audio = decode_audio(source.encoded(), self.sample_rate, self.channels, name=source.file_id)
        except Unreadable as e:  # the file's own fault only: anything else is a bug, and ends the run
            return Decoded(source.file_id, None, str(e))
        end = segments[-1].start + segments[-1].length if segments else 0
        if audio.shape[1] < end:
            return Decoded(source.file_id, None, f"decoded {audio.shape[1]} samples, fewer than its header "
                                                 f"promised ({end})")
        clips = [audio[:, s.start : s.start + s.length] for s in segments]
        return Decoded(source.file_id, [self.prepare(c) for c in clips] if self.prepare else clips)


def _die_with_parent(worker_id: int) -> None:
    """A worker ends when the extraction does, even when it is SIGKILLed: torch's own check of the parent
    runs only while a worker waits for work, and one blocked handing over a decoded file (a full pipe
    nobody reads any more) would otherwise live on. Linux's PR_SET_PDEATHSIG; elsewhere torch's check."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the line above
            os._exit(1)


def _as_is(item: Decoded) -> Decoded:  # the default collate would turn arrays into tensors
    return item


def decoded(jobs: Sequence[Job], sample_rate: int, channels: int, workers: int = 0,
            prepare: Prepare | None = None) -> Iterator[Decoded]:
    """Each job's file decoded to (channels, samples) at `sample_rate` and cut into its segments (each
    passed through `prepare` when given), in order; `workers` processes (0: this one). Raises
    MusicsteerError (one line) when a worker dies or fails unexpectedly."""
    files = FileDecodes(jobs, sample_rate, channels, prepare)
    if workers == 0 or not files.jobs:
        yield from (files[i] for i in range(len(files)))
        return
    loader = DataLoader(files, batch_size=None, shuffle=False, num_workers=min(workers, len(files)),
                        collate_fn=_as_is, prefetch_factor=PREFETCH, multiprocessing_context="fork",
                        worker_init_fn=_die_with_parent)
    items = iter(loader)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception as e:  # a worker died, or raised what decode_audio does not (a bug, MemoryError)
            raise _failed(e) from None
        yield item


@contextmanager
def worker_failures() -> Iterator[None]:
    """Around the loop that consumes `decoded`, and around whatever consumes that loop's results (a
    generator's `with` does not cover its consumer's code between yields): torch reports a worker's death
    from its SIGCHLD handler, in the main thread, wherever it is (in the model's forward as often as in
    the loader or a shard's write). That report (a RuntimeError naming a "DataLoader worker") becomes the
    same one line as a failure in the loader."""
    try:
        yield
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise _failed(e) from None


def _failed(error: Exception) -> MusicsteerError:
    return MusicsteerError(f"a decoding worker failed ({_first_and_last(error)}); the shards written are kept: "
                           "run the same command again to resume")


def _first_and_last(error: Exception) -> str:
    """A worker's error as one line: DataLoader re-raises it with the worker's traceback in the text."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}"
    return one_line(text or type(error).__name__, 240)
