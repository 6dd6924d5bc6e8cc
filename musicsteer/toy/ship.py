"""`musicsteer toy ship RUN`: a finished run's MusicGen, judge and vectors into the package (shipped.py's folder).

The models are loaded from the run and saved again with save_pretrained in float16 (the decoder stage already
saves float16; the judge saves float32), their processors and toy_<stage>.json beside them; the vectors files
are copied byte for byte (the vectors format is float32, and they are a few kB). Everything is written into a
temporary sibling of the folder, measured against CAP_BYTES (refused over it, with the sizes, and nothing
changed), then toy.json is written and the folder swapped in with renames, so `--model toy` never sees half a
shipment.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..engine.errors import MusicsteerError, shown
from . import plan
from .shipped import FAMILIES, MANIFEST, PARTS, weights_dir

CAP_BYTES = 30_000_000  # all shipped files together (issue 24: the GPU machine takes a 64 MiB tree, wheels included)
STAGES = {"model": "decoder", "judge": "judge", "vectors": "vectors"}  # shipped part -> the run stage it comes from


def ship(run: str | Path, dest: str | Path | None = None, cap: int = CAP_BYTES) -> dict[str, Any]:
    """Ship RUN's decoder model, judge and vectors into `dest` (default: shipped.weights_dir()). Returns the
    manifest written as toy.json. Raises MusicsteerError (one line): an unfinished run, a `dest` that holds
    something other than a shipment, a shipment over `cap` bytes."""
    run = Path(run).expanduser()
    dest = Path(dest).expanduser() if dest is not None else weights_dir()
    missing = [stage for stage in STAGES.values() if not plan.finished(run, stage)]
    if missing:
        raise MusicsteerError(f"RUN {shown(str(run))} has no finished {', '.join(missing)} stage: run "
                              "`musicsteer toy train CORPUS RUN` to the end first")
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / MANIFEST).is_file())):
        raise MusicsteerError(f"{shown(str(dest))} is not a toy weights folder (no {MANIFEST}); refusing to replace it")
    new, old = dest.parent / f".{dest.name}.new", dest.parent / f".{dest.name}.old"
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        _model(plan.model_dir(run, "decoder"), new / "model")
        _judge(plan.model_dir(run, "judge"), new / "judge")
        (new / "vectors").mkdir()
        for name in [f"{family}.safetensors" for family in FAMILIES] + ["toy_vectors.json", "tables.md"]:
            shutil.copyfile(run / "vectors" / name, new / "vectors" / name)
        files = {path.relative_to(new).as_posix(): path for path in sorted(new.rglob("*")) if path.is_file()}
        sizes = {part: sum(p.stat().st_size for name, p in files.items() if name.startswith(f"{part}/"))
                 for part in PARTS}
        total = sum(sizes.values())
        if total > cap:
            told = ", ".join(f"{part} {size / 1e6:.2f} MB" for part, size in sizes.items())
            raise MusicsteerError(f"the toy is {total / 1e6:.2f} MB ({told}), over the {cap / 1e6:g} MB the "
                                  "package allows; nothing shipped")
        manifest = {
            "run": str(run.resolve()), "run_stamp": _json(run / plan.RUN_STAMP),
            "stages": {part: {k: v for k, v in _json(plan.facts_path(run, stage)).items()
                              if k in ("steps", "held_out", "zero_shot")} for part, stage in STAGES.items()},
            "bytes": total, "sizes": sizes,
            "files": {name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for name, p in files.items()},
        }
        (new / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if dest.exists():
            dest.rename(old)
        new.rename(dest)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)  # (only once the new folder is in place)
    return manifest


def _model(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from ..engine.tiny import no_progress_bars

    with no_progress_bars():
        # .to: from_pretrained keeps T5's `wo` layers in float32 (its _keep_in_fp32_modules); all float16 on disk, as
        # decoder.save_decoder writes it (the engine loads it in the --dtype asked for)
        model = MusicgenForConditionalGeneration.from_pretrained(source, dtype=torch.float16)
        model.to(torch.float16).save_pretrained(out)
        AutoProcessor.from_pretrained(source).save_pretrained(out)
    shutil.copyfile(source / "toy_decoder.json", out / "toy_decoder.json")


def _judge(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoProcessor, ClapModel

    from ..engine.tiny import no_progress_bars

    with no_progress_bars():
        ClapModel.from_pretrained(source, dtype=torch.float16).to(torch.float16).save_pretrained(out)
        AutoProcessor.from_pretrained(source).save_pretrained(out)
    shutil.copyfile(source / "toy_judge.json", out / "toy_judge.json")


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
