"""The activations cache on disk (ACTS_DIR): resumable, and tied to one model and one data cut.

Layout:
  manifest.json            settings, model, labels, the segment list (row order), skipped files, and
                           `missing`: the rows of files that did not decode during extraction (their
                           rows in the arrays are zeros; load_activations leaves them out)
  shards/shard-NNNNNNN.npz one per forward batch: `index` (b,) plus one (b, layers, d_model) array
                           per site.pool; written to a temporary name and renamed, so a shard on
                           disk is always whole. The shards ARE the progress record: a segment is
                           done iff some shard holds it, so a kill between two writes cannot leave
                           a manifest that disagrees with the data.
  {site}.{pool}.npy        the final (N, layers, d_model) float32 arrays in segment order, written when
                           every segment is done; the shards are then deleted.
Why float32: float16 would halve the disk, and measured on the tiny model it changes no probe
accuracy (its rounding is ~1% of the spread between segments), but it overflows above 65504 and
a real model's residual stream has not been measured here; 393 MB per 1,000 segments is cheap
next to the hours a CPU needs to extract them.
Disk: 4 arrays x layers x d_model x 4 bytes per segment: musicgen-small (24 x 1024) 393 MB per
1,000 segments; the tiny model (2 x 64) 2 MB.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicsteer.engine.errors import MusicsteerError, one_line, shown
from musicsteer.engine.files import atomic_write, remove_partial
from musicsteer.engine.params import SITES

from .settings import POOLS

FORMAT = "musicsteer.activations/1"
KEYS = tuple(f"{site}.{pool}" for site in SITES for pool in POOLS)
# The settings that make two extractions comparable; any difference means another cache.
IDENTITY = ("model", "segment_seconds", "prompt", "dtype")


@dataclass
class Activations:
    x: np.ndarray  # (N, layers, d_model) float32
    y: np.ndarray  # (N,) int, index into labels
    labels: list[str]
    manifest: dict

    @property
    def num_layers(self) -> int:
        return int(self.x.shape[1])


class ActivationCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.shards = self.root / "shards"
        self.manifest_path = self.root / "manifest.json"

    # -- manifest ------------------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise MusicsteerError(f"{self.manifest_path} is unreadable ({one_line(e)}); "
                                  "use another --out") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MusicsteerError(f"{self.root} is not a musicsteer activations folder; use another --out")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        atomic_write(self.manifest_path, lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))

    def check_root(self) -> dict | None:
        """The folder is usable for activations (before the model loads): none yet, an empty folder, or
        one with a readable manifest, which is returned. Not a file, not another folder's contents."""
        try:
            if self.root.exists() and not self.root.is_dir():
                raise MusicsteerError(f"--out {shown(str(self.root))} is a file; give a folder")
            old = self.read_manifest()
            if old is None and self.root.is_dir() and any(p for p in self.root.iterdir()
                                                          if not p.name.startswith(".")):
                raise MusicsteerError(f"{shown(str(self.root))} is not empty and holds no activations manifest; "
                                      "use another --out")
        except OSError as e:  # a name too long for the file system, a folder we may not enter
            raise MusicsteerError(f"cannot use --out {shown(str(self.root))}: {e.strerror or e}") from None
        return old

    def check_settings(self, settings: dict) -> dict | None:
        """Refuse a folder made by another model, segment length, prompt or dtype (mixing them would
        silently average incomparable activations); return its manifest, if it has one."""
        old = self.check_root()
        if old is None:
            return None
        for key in IDENTITY:
            if old["settings"].get(key) != settings[key]:
                raise MusicsteerError(f"{shown(str(self.root))} holds activations made with {key} "
                                      f"{shown(old['settings'].get(key))}, not {shown(settings[key])}; "
                                      "use another --out")
        return old

    def open_for(self, manifest: dict) -> dict:
        """Start or resume the extraction `manifest` describes; return the manifest in force."""
        old = self.check_settings(manifest["settings"])
        if old is None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MusicsteerError(f"cannot create {self.root}: {e.strerror or e}") from None
            self.write_manifest(manifest)
            return manifest
        if old["dataset"] != manifest["dataset"]:
            raise MusicsteerError(f"{self.root} holds activations of other data (the files, labels or "
                                  "segments differ); use another --out")
        return old

    # -- shards --------------------------------------------------------------------------------
    def clean_partial(self) -> None:
        """Remove temporary files a killed run left behind (never whole shards). Its glob, ".tmp-*", once
        matched no name atomic_write makes: files.remove_partial shares atomic_write's own mark."""
        remove_partial(self.root)

    def done(self) -> set[int]:
        indices: set[int] = set()
        if self.shards.is_dir():
            for shard in self.shards.glob("shard-*.npz"):
                with np.load(shard) as z:
                    indices.update(int(i) for i in z["index"])
        return indices

    def mark_missing(self, manifest: dict, file_id: str, reason: str, rows: list[int]) -> dict:
        """Record (at once, atomically) that `file_id` did not decode: its rows join `missing`, it joins
        `skipped`; a resumed run reads both and neither retries the file nor waits for its rows."""
        missing = sorted(set(manifest.get("missing", [])) | set(rows))
        skipped = manifest.get("skipped", [])
        if all(s["file"] != file_id for s in skipped):  # on Ray, two items may each hold some of its rows
            skipped = [*skipped, {"file": file_id, "reason": reason}]
        manifest = dict(manifest, missing=missing, skipped=skipped)
        self.write_manifest(manifest)
        return manifest

    def write_shard(self, index: list[int], arrays: dict[str, np.ndarray]) -> Path:
        self.shards.mkdir(exist_ok=True)
        data = {key: np.asarray(arrays[key], dtype=np.float32) for key in KEYS}
        path = self.shards / f"shard-{index[0]:07d}.npz"

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, index=np.asarray(index, dtype=np.int64), **data)

        atomic_write(path, write)
        return path

    def finalise(self, manifest: dict) -> None:
        """Gather the shards into one (N, layers, d_model) array per site.pool, then drop them."""
        shards = sorted(self.shards.glob("shard-*.npz"))
        n, layers, width = len(manifest["segments"]), manifest["num_layers"], manifest["d_model"]
        absent = n - len(self.done() | set(manifest.get("missing", [])))
        if absent:  # never a "complete" cache with rows of zeros: the shards are the record, and they disagree
            raise MusicsteerError(f"{self.root} lacks {absent} of its {n} segments' shards; run the same "
                                  "`probe extract` again to make them")
        for key in KEYS:
            def write(tmp: Path, key: str = key) -> None:
                # written through a memory map: a big cache never has to fit in memory twice
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, layers, width))
                for shard in shards:
                    with np.load(shard) as z:
                        out[z["index"]] = z[key]
                out.flush()
                del out

            atomic_write(self.root / f"{key}.npy", write)
        manifest = dict(manifest, complete=True)
        self.write_manifest(manifest)
        shutil.rmtree(self.shards, ignore_errors=True)


def load_activations(root: str | Path, site: str = "residual", pool: str = "mean") -> Activations:
    """The finished cache's activations at one site and pooling, with integer labels."""
    cache = ActivationCache(root)
    try:
        found = cache.root.is_dir()
    except OSError as e:  # a name too long for the file system, a folder we may not enter
        raise MusicsteerError(f"cannot use activations folder {shown(str(cache.root))}: {e.strerror or e}") from None
    if not found:
        raise MusicsteerError(f"activations folder not found: {shown(str(cache.root))}")
    manifest = cache.read_manifest()
    if manifest is None:
        raise MusicsteerError(f"{cache.root} has no manifest.json; make it with `musicsteer probe extract`")
    if site not in SITES or pool not in POOLS:
        raise MusicsteerError(f"unknown site/pool {site}/{pool}; expected residual|attention and mean|last")
    if not manifest.get("complete"):
        done, total = len(cache.done()), len(manifest["segments"])
        raise MusicsteerError(f"the extraction into {cache.root} is unfinished ({done} of {total} segments); "
                              "run the same `probe extract` again to finish it")
    path = cache.root / f"{site}.{pool}.npy"
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        raise MusicsteerError(f"cannot read {path}: {one_line(e)}") from None
    segments = manifest["segments"]
    if x.shape != (len(segments), manifest["num_layers"], manifest["d_model"]):
        raise MusicsteerError(f"{path} has shape {x.shape}, which does not match {cache.manifest_path}")
    missing = set(manifest.get("missing", []))
    keep = [i for i in range(len(segments)) if i not in missing]
    # a label whose every file failed to decode has no rows left: it is no label of these activations
    labels = [label for label in manifest["labels"] if any(segments[i][1] == label for i in keep)]
    if len(labels) < 2:
        raise MusicsteerError(f"{cache.root} has rows of {len(labels)} label(s) once the files that did not "
                              "decode are left out; a probe needs at least two")
    y = np.asarray([labels.index(segments[i][1]) for i in keep], dtype=np.int64)
    return Activations(x[keep] if missing else x, y, labels, manifest)
