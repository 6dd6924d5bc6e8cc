"""Tests for reading and writing audio files (real files in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import one_line_error

from musicsteer.engine.audio_io import peak_normalize, read_audio, write_wav
from musicsteer.engine.errors import MusicsteerError

SR_IN = 44_100
SR_OUT = 32_000


def _tone(seconds: float, freq: float = 440.0, sr: int = SR_IN) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(signal: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    return float(np.fft.rfftfreq(signal.size, 1 / sr)[np.argmax(spectrum)])


def _error(*args: object, **kwargs: object) -> str:
    return one_line_error(read_audio, *args, **kwargs)


@pytest.mark.parametrize(("name", "fmt"), [("tone.flac", "FLAC"), ("tone.ogg", "OGG")])
def test_stereo_file_to_mono_32k(tmp_path: Path, name: str, fmt: str) -> None:
    tone = _tone(1.0)
    path = tmp_path / name
    sf.write(path, np.stack([tone, tone], axis=1), SR_IN, format=fmt)
    audio = read_audio(path, SR_OUT, 1)
    assert audio.dtype == np.float32 and audio.shape[0] == 1
    assert abs(audio.shape[1] - SR_OUT) <= 1
    assert abs(_peak_hz(audio[0], SR_OUT) - 440.0) < 2.0
    assert np.isfinite(audio).all()


def test_mean_of_channels(tmp_path: Path) -> None:
    tone = _tone(0.5)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([tone, -tone], axis=1), SR_IN, subtype="FLOAT")
    assert np.abs(read_audio(path, SR_IN, 1)).max() == 0.0  # opposite channels cancel


def test_mono_input_gives_stereo(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    sf.write(path, _tone(0.5), SR_IN, subtype="FLOAT")
    audio = read_audio(path, SR_OUT, 2)
    assert audio.shape[0] == 2 and abs(audio.shape[1] - SR_OUT // 2) <= 1
    np.testing.assert_array_equal(audio[0], audio[1])


def test_stereo_kept_and_wide_file_takes_first_two(tmp_path: Path) -> None:
    tone = _tone(0.2)
    path = tmp_path / "four.wav"
    sf.write(path, np.stack([tone, 0.5 * tone, 0 * tone, tone], axis=1), SR_IN, subtype="FLOAT")
    audio = read_audio(path, SR_IN, 2)  # same rate: no resampling, values exact
    np.testing.assert_array_equal(audio[0], tone)
    np.testing.assert_array_equal(audio[1], 0.5 * tone)


def test_max_seconds_keeps_the_end(tmp_path: Path) -> None:
    # First 2 s at 220 Hz, last 1 s at 880 Hz: keeping 1 s must give the 880 Hz part.
    path = tmp_path / "two_parts.flac"
    sf.write(path, np.concatenate([_tone(2.0, 220.0), _tone(1.0, 880.0)]), SR_IN)
    audio = read_audio(path, SR_OUT, 1, max_seconds=1.0)
    assert audio.shape == (1, SR_OUT)
    assert abs(_peak_hz(audio[0], SR_OUT) - 880.0) < 3.0
    short = read_audio(path, SR_OUT, 1, max_seconds=10.0)  # longer than the file: all of it
    assert abs(short.shape[1] - 3 * SR_OUT) <= 1


def test_missing_corrupt_empty_and_nan_files(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nope.wav", SR_OUT, 1)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "cannot read audio file" in _error(corrupt, SR_OUT, 1)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), SR_IN, subtype="FLOAT")
    assert "empty" in _error(empty, SR_OUT, 1)
    bad = tmp_path / "nan.wav"
    sf.write(bad, np.array([0.1, np.nan, 0.2], np.float32), SR_IN, subtype="FLOAT")
    assert "NaN" in _error(bad, SR_OUT, 1)
    assert "> 0 seconds" in _error(corrupt, SR_OUT, 1, max_seconds=0)


def test_write_wav_round_trip_is_exact_float(tmp_path: Path) -> None:
    audio = np.random.default_rng(1).uniform(-3, 3, size=(2, 1000)).astype(np.float32)
    out = write_wav(tmp_path / "new" / "dir" / "out.wav", audio, SR_OUT)
    assert out == tmp_path / "new" / "dir" / "out.wav"
    info = sf.info(out)
    assert info.subtype == "FLOAT" and info.samplerate == SR_OUT and info.channels == 2
    np.testing.assert_array_equal(read_audio(out, SR_OUT, 2), audio)  # nothing clipped
    assert [p.name for p in out.parent.iterdir()] == ["out.wav"]  # no temp file left behind


def test_write_wav_mono_1d_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    write_wav(path, np.ones(10), SR_OUT)
    write_wav(path, np.full(5, 0.25), SR_OUT)
    data, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(data, np.full(5, 0.25, np.float32))


def test_write_wav_unwritable_paths(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker / "out.wav", blocker / "sub" / "out.wav", tmp_path):
        with pytest.raises(MusicsteerError) as info:
            write_wav(target, np.zeros(4), SR_OUT)
        assert "\n" not in str(info.value)


def test_write_wav_read_only_filesystem() -> None:
    # /proc refuses new files even to root (CI runs as root, so chmod-based checks would prove nothing).
    with pytest.raises(MusicsteerError) as info:
        write_wav("/proc/musicsteer-test/out.wav", np.zeros(4), SR_OUT)
    assert "\n" not in str(info.value)


def test_write_wav_bad_shape() -> None:
    with pytest.raises(ValueError):
        write_wav("unused.wav", np.zeros((1000, 2)), SR_OUT)  # (samples, channels) by mistake


def test_peak_normalize() -> None:
    tiny = np.array([[1e-6, -2e-6]], np.float32)
    out = peak_normalize(tiny)
    assert out.dtype == np.float32 and np.isclose(np.abs(out).max(), 0.95)
    assert tiny[0, 1] == np.float32(-2e-6)  # input untouched
    loud = np.array([10.0, -40.0])
    np.testing.assert_allclose(peak_normalize(loud, 0.5), [0.125, -0.5])
    silent = np.zeros(3, np.float32)
    result = peak_normalize(silent)
    assert result is not silent and not result.any()
