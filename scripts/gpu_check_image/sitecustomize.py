"""scripts/gpu-check --dry-run's stand-in for the GPU image, loaded by Python at start-up (PYTHONPATH).

Imports of a package that the GPU image lacks (scripts/gpu_image_packages.txt) and .whl/ does not carry
($GPU_CHECK_CARRIED, set by gpu-check) fail, as they would fail there; and sounddevice's import fails as it
does there, where no PortAudio library is installed. So the dry run on this CPU finds what the GPU run would.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import re
import sys
from pathlib import Path


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_LIST = Path(__file__).resolve().parent.parent / "gpu_image_packages.txt"
_ALLOWED = {_canon(line.strip()) for line in _LIST.read_text().splitlines() if line.strip() and line[0] != "#"}
_ALLOWED |= {_canon(n) for n in os.environ.get("GPU_CHECK_CARRIED", "").split(",") if n}
_ALLOWED.add("musicsteer")  # staged from the checkout
_OWNERS = importlib.metadata.packages_distributions()  # top-level module -> distributions installed here


def _allowed(top: str) -> bool:
    return _canon(top) in _ALLOWED or any(_canon(d) in _ALLOWED for d in _OWNERS.get(top, ()))


def _imported_by_the_image() -> bool:
    """Whether the import statement running now is in a third-party package that is not carried: one of the
    image's, whose own dependencies are the image's business (its versions there differ from these). Ours
    (musicsteer, the tests, the scripts) and the carried packages' imports are checked."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                 or "importlib" in frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return False
    top = str(frame.f_globals.get("__name__", "")).partition(".")[0]
    carried = {_canon(n) for n in os.environ.get("GPU_CHECK_CARRIED", "").split(",") if n} | {"musicsteer"}
    owners = _OWNERS.get(top, ())
    return bool(owners) and not any(_canon(d) in carried for d in owners)


class GpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 - the finder protocol
        if name == "sounddevice":
            raise OSError("PortAudio library not found")  # sounddevice's own words where libportaudio is absent
        if "." in name:
            return None
        owners = _OWNERS.get(name)
        if not owners or _allowed(name) or _imported_by_the_image():
            return None  # the standard library, a local module, a package the GPU machine has, or one that a
            # package of the image's own imports (its versions there bring their own dependencies)
        raise ModuleNotFoundError(f"No module named {name!r} on the GPU image (from {', '.join(owners)}; not "
                                  "carried in .whl: add it to scripts/gpu-wheels' closure)", name=name)


sys.meta_path.insert(0, GpuImage())
