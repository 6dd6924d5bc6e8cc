"""Generating the evaluation clips (planned in plan.py), resumably.

Each clip is three files: NAME.wav (the audio), NAME.npy (its codes, (codebooks, frames)) and
NAME.json (its identity: every setting that decides its codes, and where the continuation starts).
The JSON is written last, so a clip counts as done only when all three are whole; a rerun with the
same identity reuses the files untouched (no regeneration, mtimes unchanged), and any change of
model, token step (--decode), seed, prompt, length, sampling or steering makes a new clip. The layout
under OUT/clips/ is plan.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicsteer.engine.audio_io import write_wav
from musicsteer.engine.codec import decode_codes
from musicsteer.engine.files import atomic_write, remove_partial
from musicsteer.engine.generator import Generator, render_batch
from musicsteer.engine.loading import LoadedModel
from musicsteer.engine.vectors import SteeringVectors

from .plan import ClipJob, batches
from .protocol import Protocol


@dataclass
class Clip:
    job: ClipJob
    wav: Path
    prompt_frames: int  # frames of the source at the start of the WAV (0 for source clips)
    frames: int
    reused: bool


class ClipStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self, name: str) -> tuple[Path, Path, Path]:
        # Not with_suffix: a name like "00-steered-a0.5" has a dot that is no suffix.
        return tuple(self.root / f"{name}{suffix}" for suffix in (".wav", ".npy", ".json"))

    def lookup(self, job: ClipJob) -> Clip | None:
        """The finished clip with exactly this identity, if it is on disk."""
        wav, codes, meta = self.paths(job.name)
        if not (wav.is_file() and codes.is_file() and meta.is_file()):
            return None
        try:
            stored = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None  # a damaged record is regenerated, not trusted
        # Round-trip the identity through JSON so tuples and lists compare alike.
        if stored.get("identity") != json.loads(json.dumps(job.identity)):
            return None
        return Clip(job, wav, int(stored["prompt_frames"]), int(stored["frames"]), reused=True)

    def codes(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self.paths(name)[1]))

    def save(self, job: ClipJob, codes: torch.Tensor, audio: np.ndarray, sample_rate: int,
             prompt_frames: int) -> Clip:
        wav, codes_path, meta = self.paths(job.name)
        write_wav(wav, audio, sample_rate)
        atomic_write(codes_path, lambda tmp: np.save(tmp, codes.numpy()))
        record = {"identity": job.identity, "prompt_frames": prompt_frames, "frames": int(codes.shape[-1]),
                  "sample_rate": sample_rate}
        atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"))
        return Clip(job, wav, prompt_frames, int(codes.shape[-1]), reused=False)



# One batch to render: its number in the plan's batches, its jobs, and (continuations) the source codes
# (B, K, F) they continue. What comes back per job: codes (K, frames) on the CPU and audio (channels, samples).
Item = tuple[int, list[ClipJob], torch.Tensor | None]
Rendered = list[tuple[torch.Tensor, np.ndarray]]
Render = Callable[[list[Item]], Iterator[tuple[int, Rendered]]]


def render_clips(lm: LoadedModel, vectors: SteeringVectors, jobs: list[ClipJob], protocol: Protocol,
                 generator: type[Generator], prompt_codes: torch.Tensor | None) -> Rendered:
    """The clips of `jobs` (one block: all sources, or continuations of one kind, α and length of sources of
    equal length), in one batched pass with the token loop `generator` (the --decode choice,
    graph.GENERATORS), and their audio.

    A batch of B is B streams in the CFG batch of 2B: each its own prompt, seed, source codes and
    steering; sampling is the protocol's, shared. A continuation longer than the model's window (a hold)
    slides as a live session does: the Generator is the engine's, with its default window and keep.
    Greedy, every stream's codes equal its lone run's; seeded, the batch's matmul rounding can move a
    top-k cut (docs/design.md §5), so the batch size is part of a clip's identity (runner._make_clips)."""
    if len({job.block for job in jobs}) != 1:
        raise ValueError("render_clips batches clips of one block (plan.batches): one kind, one α, one length")
    total = max(1, round(jobs[0].seconds * lm.frame_rate))  # new frames: a continuation's come after its source
    if prompt_codes is not None:
        prompt_codes = prompt_codes.to(lm.device)
        total += prompt_codes.shape[-1]
    steered = any(job.steered for job in jobs)
    gen = generator(lm, [job.controls for job in jobs], vectors if steered else None, steer_rule=protocol.steer_rule)
    codes = render_batch(gen, total, prompt_codes).cpu()
    return [(codes[b], decode_codes(lm, codes[b])) for b in range(len(jobs))]


def local_render(lm: LoadedModel, vectors: SteeringVectors, protocol: Protocol, generator: type[Generator]) -> Render:
    """`Render` in this process, item by item."""
    def render(items: list[Item]) -> Iterator[tuple[int, Rendered]]:
        for number, jobs, prompt_codes in items:
            yield number, render_clips(lm, vectors, jobs, protocol, generator, prompt_codes)
    return render


def make_clips(store: ClipStore, jobs: list[ClipJob], size: int, render: Render, sample_rate: int,
               progress: Callable[[int], object] = lambda n: None) -> list[Clip]:
    """Every clip of the plan's `jobs`, in plan order: from the store when it is there with its identity,
    else rendered by `render` in the plan's batches of `size` (batches()), sources before the
    continuations that read their codes; only the missing clips of a batch are saved. `render` may give
    batches back in any order (a Ray cluster, evaluation/clips_ray.py); each is saved as it arrives, so a
    killed run keeps every batch it finished."""
    remove_partial(store.root)  # what a killed run was writing (make_clips runs under the folder's lock)
    clips: dict[str, Clip] = {}
    groups = batches(jobs, size)
    found: dict[int, list[Clip | None]] = {}  # per batch: the clips already on disk
    prompt_frames: dict[int, int] = {}  # per batch to render: the frames of the sources it continues
    for sources in (True, False):
        items: list[Item] = []
        for number, group in enumerate(groups):
            if (group[0].kind == "source") != sources:
                continue
            found[number] = [store.lookup(job) for job in group]
            if all(found[number]):
                clips.update((clip.job.name, clip) for clip in found[number])
                progress(len(group))
                continue
            codes = None if sources else torch.stack([store.codes(job.source_name) for job in group])
            items.append((number, group, codes))
            prompt_frames[number] = 0 if codes is None else int(codes.shape[-1])
        for number, rendered in render(items):
            group = groups[number]
            for job, clip, (codes, audio) in zip(group, found[number], rendered, strict=True):
                clips[job.name] = clip or store.save(job, codes, audio, sample_rate, prompt_frames[number])
            progress(len(group))
    return [clips[job.name] for job in jobs]
