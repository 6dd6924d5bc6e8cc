"""`musicsteer toy corpus`: the labelled collection of rendered clips, deterministic per seed, resumable.

Layout of OUT (what `probe extract --data` reads, and what the training stages read):
  OUT/<genre>/<genre>-NNNNN.wav   10 s, 32 kHz, mono, 16-bit PCM: `--data OUT` labels by genre (a folder each)
  OUT/manifest.csv               path,label,genre,instrument,tempo,key,mood,caption,split (label = genre)
  OUT/instruments.csv            path,label with the lead instrument as label: `--data OUT/instruments.csv`
  OUT/corpus.json                what made it (seed, version): a rerun with another seed is refused
  OUT/.clips/<name>.json         one finished clip's row (hidden: probe extract ignores it), for resuming
Clip i is genre GENRES[i % 4] and draws only from (seed, i): `--clips 800` after `--clips 400` with the same
seed keeps the first 400 and adds 400. One clip in ten of each genre (every tenth of its clips) is held out.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from musicsteer.engine.errors import MusicsteerError, shown

from .music import CLIP_SAMPLES, GENRES, KEY_NAMES, LEADS, SAMPLE_RATE, TEMPI, Clip

VERSION = 1  # bump when the music changes: a corpus of another version is not resumed
HELD_OUT_EVERY = 10
COLUMNS = ("path", "label", "genre", "instrument", "tempo", "key", "mood", "caption", "split")
# Keys a musician would expect: guitar keys for rock, flat keys for jazz, anything for the rest.
TONICS = {"rock": (4, 9, 2, 7, 0, 11), "jazz": (10, 3, 8, 5, 0, 7), "electronic": tuple(range(12)),
          "classical": tuple(range(12))}


def plan(clips: int, seed: int) -> list[Clip]:
    """The clips of a corpus: clip i depends only on (seed, i). A classical clip's mode is its score's, known
    once the score is parsed (`finish`); here it is ''."""
    out = []
    for i in range(clips):
        rng = np.random.default_rng([seed, i, VERSION])
        genre = GENRES[i % len(GENRES)]
        # Leads in turn within a genre, shifted by one every ten clips (and by the seed), so instruments stay
        # balanced in every genre, and the held-out tenth (see `split`) cycles through all of them too.
        leads, j = LEADS[genre], i // len(GENRES)
        instrument = leads[(j + j // HELD_OUT_EVERY + seed) % len(leads)]
        low, high = TEMPI[genre]
        tempo = int(rng.integers(low, high + 1))
        tonic = int(TONICS[genre][int(rng.integers(len(TONICS[genre])))])
        mode = "" if genre == "classical" else ("minor" if rng.random() < 0.5 else "major")
        source = ""
        if genre == "classical":
            from .classical import pick_source

            source = pick_source(rng)
        out.append(Clip(i, genre, instrument, tempo, tonic, mode, int(rng.integers(2**31)), source))
    return out


def split(clip: Clip) -> str:
    return "heldout" if (clip.index // len(GENRES)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"


def caption(clip: Clip, lead: str, texture: str) -> str:
    """What is heard, in words: genre, mood, tempo, key, lead instrument, then the rest of the band."""
    return (f"{clip.mood.capitalize()} {clip.genre} music at {clip.tempo} BPM in {clip.key}, "
            f"led by {lead} ({clip.instrument}): {texture}.")


def render_clip(clip: Clip) -> tuple[Clip, np.ndarray, str]:
    """(the clip with its mode settled, (CLIP_SAMPLES,) float32 audio, caption)."""
    from . import classical, genres
    from .render import render

    if clip.genre == "classical":
        clip = dataclasses.replace(clip, mode=classical.score_key(clip.source)[1])
        arrangement = classical.arrange(clip)
    else:
        arrangement = getattr(genres, clip.genre)(clip)
    audio = render(clip.genre, arrangement, clip.tempo)
    return clip, audio, caption(clip, arrangement.lead_label, arrangement.texture)


def relative(clip: Clip) -> str:
    return f"{clip.genre}/{clip.name}.wav"


def row(clip: Clip, text: str) -> dict[str, str]:
    return {"path": relative(clip), "label": clip.genre, "genre": clip.genre, "instrument": clip.instrument,
            "tempo": str(clip.tempo), "key": clip.key, "mood": clip.mood, "caption": text, "split": split(clip)}


def _done(out: Path, clip: Clip) -> dict[str, str] | None:
    """The row of a clip already written and valid (right format and length, its row matching the plan)."""
    import soundfile as sf

    wav, state = out / relative(clip), out / ".clips" / f"{clip.name}.json"
    try:
        saved = json.loads(state.read_text())
        info = sf.info(str(wav))
    except (OSError, ValueError, RuntimeError):
        return None
    same = (saved.get("seed") == clip.seed and saved.get("row", {}).get("instrument") == clip.instrument
            and saved["row"].get("tempo") == str(clip.tempo))
    good = info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames == CLIP_SAMPLES
    return saved["row"] if same and good else None


def _work(job: tuple[str, Clip]) -> dict[str, str]:
    """Render one clip and write it (WAV, then its row), each atomically: an interrupted run leaves no half file."""
    import soundfile as sf

    out, clip = Path(job[0]), job[1]
    clip, audio, text = render_clip(clip)
    wav = out / relative(clip)
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp = wav.parent / f".{wav.name}.part"
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, wav)
    result = row(clip, text)
    state = out / ".clips" / f"{clip.name}.json"
    state.parent.mkdir(exist_ok=True)
    tmp = state.parent / f".{state.name}.part"
    tmp.write_text(json.dumps({"seed": clip.seed, "row": result}, sort_keys=True))
    os.replace(tmp, state)
    return result


def _work_indexed(job: tuple[str, Clip]) -> tuple[int, dict[str, str]]:
    return job[1].index, _work(job)


def _quiet_worker() -> None:
    """A worker leaves Ctrl-C to the parent (which stops the pool) and ends quietly when the pool terminates it
    (not through the CLI's SIGTERM handler, which would print a traceback from each worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check_out(out: Path, seed: int) -> None:
    """OUT must be new, empty, or a corpus of this seed and version (which is then resumed)."""
    meta = out / "corpus.json"
    try:
        if out.exists() and not out.is_dir():
            raise MusicsteerError(f"OUT {shown(str(out))} is a file, not a folder")
        if out.is_dir() and any(out.iterdir()):
            if not meta.is_file():
                raise MusicsteerError(f"OUT {shown(str(out))} exists and is not empty (and is no toy corpus): "
                                      "choose a new folder")
            made = json.loads(meta.read_text())
            if made.get("seed") != seed or made.get("version") != VERSION:
                raise MusicsteerError(f"OUT {shown(str(out))} holds a corpus of seed {made.get('seed')} (version "
                                      f"{made.get('version')}); --seed {seed} needs a new folder")
    except (OSError, ValueError) as e:
        raise MusicsteerError(f"cannot use OUT {shown(str(out))}: {getattr(e, 'strerror', None) or e}") from None


def prepare(out: Path, seed: int) -> None:
    """The checks before any work: the renderers and soundfont are there, `out` may be used (check_out)."""
    from .render import check_renderers

    check_renderers()
    check_out(out, seed)


def build(out: Path, clips: int, seed: int, workers: int = 1,
          progress: Callable[[int, int], None] | None = None) -> list[dict[str, str]]:
    """Write (or complete) the corpus in `out`; returns the manifest rows. `progress(done, total)` after each clip.
    Raises MusicsteerError (one line) for a missing renderer or soundfont, or an `out` it may not use."""
    prepare(out, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps({"seed": seed, "version": VERSION, "sample_rate": SAMPLE_RATE,
                                                 "keys": KEY_NAMES}) + "\n")
    todo, rows = [], {}
    for clip in plan(clips, seed):
        found = _done(out, clip)
        if found:
            rows[clip.index] = found
        else:
            todo.append(clip)
    if progress:
        progress(len(rows), clips)
    jobs = [(str(out), clip) for clip in todo]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        # fork: the workers inherit the imported renderers; each clip is independent, so the order is free.
        with multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
            for index, result in pool.imap_unordered(_work_indexed, jobs):
                rows[index] = result
                if progress:
                    progress(len(rows), clips)
    else:
        for clip, job in zip(todo, jobs, strict=True):
            rows[clip.index] = _work(job)
            if progress:
                progress(len(rows), clips)
    ordered = [rows[i] for i in sorted(rows)]
    write_manifests(out, ordered)
    return ordered


def write_manifests(out: Path, rows: list[dict[str, str]]) -> None:
    def write(name: str, columns: tuple[str, ...], items: list[dict[str, str]]) -> None:
        tmp = out / f".{name}.part"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(items)
        os.replace(tmp, out / name)

    write("manifest.csv", COLUMNS, rows)
    write("instruments.csv", ("path", "label"), [{"path": r["path"], "label": r["instrument"]} for r in rows])
