"""Files a user names: checking one exists before reading it, and writing so that a crash never
leaves half of one under its final name."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MusicsteerError, printable

TMP_MARK = ".tmp"  # in every temporary name atomic_write and the write trials make: ".{stem}.{uuid}.tmp{suffix}"


def existing_file(path: str | Path, what: str) -> Path:
    """`path` as a Path if it names a file; else one line saying it is missing, not a file, or unusable
    (a name too long for the file system, a folder we may not enter)."""
    path = Path(path)
    try:
        if not path.exists():
            raise MusicsteerError(f"{what} not found: {path}")
        if not path.is_file():
            raise MusicsteerError(f"{what} is not a file: {path}")
    except OSError as exc:
        raise MusicsteerError(f"cannot use {what} {path}: {exc.strerror or exc}") from None
    return path


def writable_file(path: str | Path, what: str, make_folder: bool = False) -> Path:
    """`path` as a Path if a file can be written there: not a folder, and its folder exists and is
    writable (make_folder: or can be made, under the nearest folder that exists). Checked before the
    work, so a typo never costs a finished session's output."""
    path = _utf8_name(Path(path), what)
    try:
        if path.is_dir():
            raise MusicsteerError(f"{what} {path} is a folder, not a file")
        folder = path.parent
        while make_folder and not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the folders below it are made when the file is written
        if not folder.is_dir():
            missing = "is not a folder" if folder.exists() else "does not exist"
            raise MusicsteerError(f"cannot write {what} {path}: {folder} {missing}")
        _try_writing(folder, f"{what} {path}")
        limit = _name_max(folder)
    except OSError as exc:
        raise MusicsteerError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if len(os.fsencode(path.name)) > limit:
        raise MusicsteerError(f"cannot write {what}: its name is longer than this file system's {limit} bytes")
    return path


def writable_folder(path: str | Path, what: str, make: bool = False) -> Path:
    """`path` as a Path if it is a folder that exists (make: or can be made, under the nearest folder that
    exists) and a file can be made in it now (tried: see `_try_writing`); else one line. For a folder
    written later (takes started live, a report, an activations cache): checked at start, so the performer
    does not learn of a read-only disk at the first record press, nor a researcher after the work."""
    path = _utf8_name(Path(path).expanduser(), what)
    named = f"{what} {_path_text(path)}"
    try:
        folder = path
        while make and not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the folders below it are made when the work writes
        if not folder.is_dir():
            raise MusicsteerError(f"cannot write {named}: {_path_text(folder)} "
                                  f"{'is not a folder' if folder.exists() else 'does not exist'}")
        _try_writing(folder, named)
    except OSError as exc:  # a name too long for the file system, a folder we may not enter
        raise MusicsteerError(f"cannot use {named}: {exc.strerror or exc}") from None
    return path


def _utf8_name(path: Path, what: str) -> Path:
    """`path` if its name is UTF-8: a byte that is not (a Latin-1 shell's é, surrogate-escaped by Python)
    passes os.open but not libsndfile's open nor a log's JSON, so it is refused here, before the work."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise MusicsteerError(f"cannot write {what} {_path_text(path)}: the name is not UTF-8 (a byte of another "
                              "encoding, as a Latin-1 shell types é): rename it") from None
    return path


def _path_text(path: Path, limit: int = 160) -> str:
    """A path for a message: whole as a performer typed it (control characters escaped), cut in the middle
    past `limit` characters, so both its start and its name show."""
    text = printable(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-(limit // 2 - 1):]}"


def _try_writing(folder: Path, what: str) -> None:
    """Make and remove a hidden file in `folder`, as the later write will: the only test that holds for
    root (who passes every permission bit), a read-only mount, a full inode table, ACLs and network file
    systems alike (os.access answers for some of these and not others). One line if it fails."""
    trial = folder / f".musicsteer-write-test-{uuid.uuid4().hex}{TMP_MARK}"
    try:
        fd = os.open(trial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise MusicsteerError(f"cannot write {what}: folder {_path_text(folder)} is not writable "
                              f"({exc.strerror or exc})") from None
    os.close(fd)
    trial.unlink(missing_ok=True)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows): the common limit
        return 255



def remove_partial(folder: Path) -> int:
    """Delete the temporaries of `atomic_write` that a killed run left under `folder` (recursively; the
    finished files are never touched). Returns how many were removed."""
    removed = 0
    for tmp in folder.rglob(f".*{TMP_MARK}*") if folder.is_dir() else ():
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` for a hidden temporary name in the same folder, then rename it to `path`.

    Same folder: the rename stays on one file system, so it is atomic. The temporary name keeps the
    final suffix (np.save would otherwise append ".npy"). On failure the temporary file is removed
    and the exception propagates.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}{TMP_MARK}{path.suffix}")
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


@contextmanager
def only_writer(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder/.lock` (an flock, released by the kernel if this process dies, even by SIGKILL) while
    one command writes `folder`: a second command writing the same folder at once is one line, instead
    of two runs interleaving files (two extractions into one cache once finalised rows of zeros).
    The folder must exist. Raises MusicsteerError when another process holds it."""
    import fcntl

    try:
        handle = (folder / ".lock").open("a+")
    except OSError as e:
        raise MusicsteerError(f"cannot lock {folder}: {e.strerror or e}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MusicsteerError(f"another musicsteer command is writing {what} {folder} right now; wait for it "
                                  "to end (a rerun then resumes), or give another folder") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
