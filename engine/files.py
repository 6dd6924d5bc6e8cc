"""Writing files so that a crash never leaves half of one under its final name."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import MusicsteerError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` for a hidden temporary name in the same folder, then rename it to `path`.

    Same folder: the rename stays on one file system, so it is atomic. The temporary name keeps the
    final suffix (np.save would otherwise append ".npy"). On failure the temporary file is removed
    and the exception propagates.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_folder_once(final: Path, build: Callable[[Path], object], complete: Callable[[Path], bool],
                      what: str) -> Path:
    """The folder `final`, made by `build(tmp)` on first use (cached models built offline).

    Built into a temporary sibling and renamed into place, so a reader never sees half a folder and
    two processes building at once both end with one complete folder (the later rename fails onto
    the winner's folder, which is then used).
    """
    if complete(final):
        return final
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-building-", dir=root))
    except OSError as e:
        raise MusicsteerError(f"cannot write the model cache {root}: {e.strerror or e}") from e
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError as e:
        if not complete(final):
            raise MusicsteerError(f"cannot write {what} into {final}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
