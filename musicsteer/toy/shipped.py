"""Where the shipped toy lives (`--model toy`, `--clap toy`, `--vectors toy`), and the one line when it does not.

`musicsteer toy ship RUN` (ship.py) writes a finished run into the package folder `musicsteer/toy/weights/`:

    weights/model/     the MusicGen (decoder, T5, codec) as save_pretrained writes it, float16 safetensors
    weights/judge/     the CLAP judge, float16 safetensors, with its processor
    weights/vectors/   genre.safetensors, instrument.safetensors (the probe pipeline's files, float32 as the
                       vectors format requires; a few kB)
    weights/toy.json   written last: what was shipped (run, steps, held-out figures, file sizes and sha256)

$MUSICSTEER_TOY_WEIGHTS names another folder instead (tests ship into a temporary one); it is read here only.
Nothing here imports torch: the CLI resolves `--vectors toy` while it parses.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..engine.errors import MusicsteerError

ENV = "MUSICSTEER_TOY_WEIGHTS"
MANIFEST = "toy.json"
PARTS = ("model", "judge", "vectors")  # the sub-folders, in the order ship writes them
FAMILIES = ("genre", "instrument")  # the vectors files: `--vectors toy` is the first, `toy:instrument` the second
NOT_TRAINED = ("the toy model is not trained yet: run `musicsteer toy train CORPUS RUN` then "
               "`musicsteer toy ship RUN`")


def weights_dir() -> Path:
    """The shipped toy's folder: $MUSICSTEER_TOY_WEIGHTS, else the package's own `weights/`."""
    override = os.environ.get(ENV, "").strip()
    return Path(override).expanduser() if override else Path(__file__).resolve().parent / "weights"


def shipped(part: str) -> Path:
    """The folder of a shipped part ("model", "judge", "vectors"). Raises MusicsteerError (NOT_TRAINED) when
    nothing has been shipped (no toy.json: ship writes it last, so a half-written folder does not count)."""
    if part not in PARTS:
        raise ValueError(f"no shipped part {part!r}")
    folder = weights_dir()
    if not (folder / MANIFEST).is_file() or not (folder / part).is_dir():
        raise MusicsteerError(NOT_TRAINED)
    return folder / part


def is_toy_vectors(spec: str) -> bool:
    """`toy` or `toy:FAMILY`: a name of the shipped vectors rather than a file."""
    return spec == "toy" or spec.startswith("toy:")


def vectors_file(spec: str) -> str:
    """A --vectors value as a path: `toy` -> the shipped genre vectors, `toy:instrument` -> the instrument
    vectors; anything else is returned unchanged (a file). Raises MusicsteerError (one line): not shipped yet,
    or an unknown family."""
    if not is_toy_vectors(spec):
        return spec
    family = spec.partition(":")[2] or FAMILIES[0]
    if family not in FAMILIES:
        raise MusicsteerError(f"--vectors {spec}: the toy ships {', '.join(f'toy:{f}' for f in FAMILIES)} "
                              "(toy alone is toy:genre)")
    return str(shipped("vectors") / f"{family}.safetensors")
