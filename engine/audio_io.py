"""Reading and writing audio files.

`read_audio` loads any format libsndfile reads (WAV, FLAC, OGG, ...) as float32 (channels, samples)
at the model's rate, for continuation prompts and for building steering vectors from audio.
`write_wav` writes a result atomically as 32-bit float WAV. Every user-caused failure (missing or
corrupt file, an output path that cannot be written) is a one-line `MusicsteerError`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from .errors import MusicsteerError, Unreadable, one_line
from .files import atomic_write, existing_file


def read_audio(
    path: str | Path, sample_rate: int, channels: int, max_seconds: float | None = None
) -> np.ndarray:
    """Read an audio file as float32 (channels, samples) at `sample_rate`.

    channels=1 averages the file's channels; channels=2 duplicates a mono file, keeps stereo, and
    takes the first two channels of anything wider. Resampling uses soxr (quality "HQ").
    max_seconds keeps the LAST max_seconds of the clip: a continuation prompt is continued from
    its end, so the end is the part that matters.
    """
    _check(sample_rate, channels, max_seconds)  # before the file: a caller's bug is not the file's fault
    return decode_audio(existing_file(path, "audio file"), sample_rate, channels, max_seconds)


def _check(sample_rate: int, channels: int, max_seconds: float | None) -> None:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate!r}")
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise MusicsteerError(f"the audio length to keep must be > 0 seconds, got {max_seconds!r}")


def decode_audio(file: Path | bytes, sample_rate: int, channels: int, max_seconds: float | None = None,
                 name: str | None = None) -> np.ndarray:
    """`read_audio` on an existing file or on a file's bytes (an audio dataset's encoded column):
    float32 (channels, samples) at `sample_rate`. `name` names the audio in errors (default: the
    path). A file that does not decode, is empty or holds NaN/inf is a one-line `Unreadable`."""
    _check(sample_rate, channels, max_seconds)
    name = str(file) if name is None else name
    opened = _opened(file)  # outside the try: a caller's wrong argument is no fault of the file
    try:
        # always_2d gives (frames, file_channels) for mono and multichannel files alike.
        data, file_rate = sf.read(opened, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise Unreadable(f"cannot read audio file {name}: {one_line(exc)}") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise Unreadable(f"audio file {name} is empty (0 samples)")
    if not np.isfinite(data).all():
        raise Unreadable(f"audio file {name} contains NaN or infinite samples")

    if channels == 1:
        data = data.mean(axis=1, keepdims=True)
    elif data.shape[1] == 1:
        data = np.repeat(data, 2, axis=1)
    else:
        data = data[:, :2]

    if max_seconds is not None:
        # Trim before resampling so a long file is not resampled only to be thrown away; a few
        # extra input samples keep soxr's start-up transient out of the part we keep.
        keep_in = math.ceil(max_seconds * file_rate) + 64
        data = data[-keep_in:]
    if file_rate != sample_rate:
        data = soxr.resample(np.ascontiguousarray(data), file_rate, sample_rate, quality="HQ")
    if max_seconds is not None:
        keep_out = max(1, round(max_seconds * sample_rate))
        data = data[-keep_out:]
    return np.ascontiguousarray(data.T, dtype=np.float32)


def _opened(file: Path | bytes) -> Path | BinaryIO:
    """What soundfile reads: a path, or a file's bytes. Anything else is a caller's bug, a TypeError raised
    before soundfile runs (soundfile's own TypeError, caught as the file's, means a file it cannot open,
    e.g. headerless .raw audio)."""
    if isinstance(file, bytes):
        return io.BytesIO(file)
    if not isinstance(file, (str, Path)):
        raise TypeError(f"an audio file is a path or its bytes, got {type(file).__name__}")
    return file


def resampled_length(frames: int, file_rate: int, sample_rate: int) -> int:
    """The samples `decode_audio` returns for `frames` frames at `file_rate` (no max_seconds): soxr's
    one-shot output length, computed as soxr computes it (in doubles, ilen * out / in + 0.5, truncated)."""
    return frames if file_rate == sample_rate else int(frames * float(sample_rate) / float(file_rate) + 0.5)


def audio_length(file: Path | bytes, sample_rate: int, name: str | None = None) -> int:
    """How many samples `decode_audio(file, sample_rate, ...)` will return, from the file's header alone
    (soundfile's info: no decode), for any channel count. A header that does not read, or says the file
    is empty, is a one-line `Unreadable`. Formats whose header only estimates its length (some MP3s)
    may decode to another length: callers check the decoded length (probes/extract.py does)."""
    name = str(file) if name is None else name
    opened = _opened(file)  # outside the try: a caller's wrong argument is no fault of the file
    try:
        info = sf.info(opened)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise Unreadable(f"cannot read audio file {name}: {one_line(exc)}") from None
    if info.frames <= 0 or info.channels <= 0:
        raise Unreadable(f"audio file {name} is empty (0 samples)")
    return resampled_length(info.frames, info.samplerate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write `audio` ((channels, samples) or (samples,)) as a 32-bit float WAV and return the path.

    Float samples are stored as they are (subtype FLOAT), so nothing outside [-1, 1] is clipped;
    call `peak_normalize` first when a player needs the usual range. Parent folders are created.
    The file is written under a temporary name in the same folder and renamed with os.replace, so
    a crash or a full disk never leaves a half-written file under the final name.
    """
    path = Path(path)
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    # More than 8 "channels" almost always means (samples, channels) was passed by mistake.
    if audio.ndim != 2 or not 1 <= audio.shape[0] <= 8:
        raise ValueError(f"audio must be (channels, samples) or (samples,), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples; refusing to write it")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate!r}")
    frames = np.ascontiguousarray(audio.T, dtype=np.float32)

    if path.is_dir():
        raise MusicsteerError(f"cannot write audio to {path}: it is a folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise MusicsteerError(f"cannot write audio to {path}: {path.parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MusicsteerError(
            f"cannot create folder {path.parent} for {path.name}: {exc.strerror or one_line(exc)}"
        ) from None
    try:
        atomic_write(path, lambda tmp: sf.write(tmp, frames, int(sample_rate), subtype="FLOAT", format="WAV"))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or one_line(exc)
        raise MusicsteerError(f"cannot write audio file {path}: {reason}") from None
    return path


def peak_normalize(audio: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Return a copy scaled so max |x| == peak (up or down); silence is returned unchanged.

    Scaling up as well as down is deliberate: a tiny random test model can produce near-silent
    or very loud output, and both should come out audible and unclipped.
    """
    if not (math.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be > 0, got {peak!r}")
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        audio = audio.astype(np.float32)
    if audio.size == 0:
        return audio.copy()
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples; cannot normalize it")
    top = float(np.max(np.abs(audio)))
    if top == 0.0:
        return audio.copy()
    return (audio * (peak / top)).astype(audio.dtype, copy=False)
