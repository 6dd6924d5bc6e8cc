"""Decoding the planned files for `probe extract`, in the main process or in worker processes.

`decoded(sources, ...)` yields one `Decoded` per source, IN THE ORDER GIVEN, whatever --workers is:
the rows and shards an extraction writes are the same for every worker count. With workers > 0 a
torch DataLoader (batch_size=None: one file per item; a sequential sampler keeps the order) runs
decode + mix + resample (engine/audio_io.decode_audio) in N forked processes while the model's
forward stays in the main process. Memory is bounded: each worker holds at most PREFETCH decoded
files ahead of the model, so N x PREFETCH files are in flight, never the collection.

A file that does not decode (its header read at plan time, its data does not) is not an error of
the run: its `Decoded` carries the one-line reason and no audio, and the caller skips it. A worker
that dies (killed, out of memory) or fails on something else ends the run as one MusicsteerError
line; the shards already written stay, so the same command resumes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset

from musicsteer.engine.audio_io import decode_audio
from musicsteer.engine.errors import MusicsteerError, one_line

from .dataset import Source

PREFETCH = 2  # decoded files each worker keeps ready


@dataclass
class Decoded:
    file_id: str
    audio: np.ndarray | None  # (channels, samples) float32 at the model's rate; None when it failed
    error: str | None = None  # one line: why the file did not decode


class FileDecodes(Dataset):
    """Sources -> Decoded, one file per item (what each DataLoader worker runs)."""

    def __init__(self, sources: Sequence[Source], sample_rate: int, channels: int) -> None:
        self.sources, self.sample_rate, self.channels = list(sources), sample_rate, channels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Decoded:
        source = self.sources[i]
        try:
            audio = decode_audio(source.encoded(), self.sample_rate, self.channels, name=source.file_id)
        except MusicsteerError as e:
            return Decoded(source.file_id, None, str(e))
        return Decoded(source.file_id, audio)


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


def decoded(sources: Sequence[Source], sample_rate: int, channels: int, workers: int = 0) -> Iterator[Decoded]:
    """Each source decoded to (channels, samples) at `sample_rate`, in order; `workers` processes
    (0: this one). Raises MusicsteerError (one line) when a worker dies or fails unexpectedly."""
    files = FileDecodes(sources, sample_rate, channels)
    if workers == 0 or not files.sources:
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
    """Around the loop that consumes `decoded`: torch reports a worker's death from its SIGCHLD handler,
    in the main thread, wherever it is (in the model's forward as often as in the loader). That report
    (a RuntimeError naming a "DataLoader worker") becomes the same one line as a failure in the loader."""
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
