"""Writing files so that a crash never leaves half of one under its final name."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


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
