"""Synthetic audio of distinct kinds (tones, chords, drums, noise bursts, clicks), seeded and offline.

The tiny model seeds its EnCodec codebooks with it (engine/tiny.py), and tests and probe runs use it
as a labelled collection whose kinds a linear probe can tell apart.
"""

from __future__ import annotations

import numpy as np

from .errors import MusicsteerError

CLIP_KINDS = ("tone", "chord", "drums", "noise", "clicks")


def synthetic_clip(kind: str, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Deterministic float32 mono test audio of one kind.

    tone/chord: sustained harmonic notes/chords that change every 0.4-1.5 s; drums: kick, snare and
    hat hits on a beat (80-160 bpm); noise: coloured noise bursts at a slower tempo (40-75 bpm);
    clicks: impulse trains. Pitch, tempo and level vary with the seed.
    """
    if kind not in CLIP_KINDS:
        raise MusicsteerError(f"unknown clip kind {kind!r}; expected one of {', '.join(CLIP_KINDS)}")
    rng = np.random.default_rng([seed, CLIP_KINDS.index(kind)])
    n = max(1, int(round(seconds * sample_rate)))
    if kind in ("tone", "chord"):
        x = _harmonic(rng, n, sample_rate, chord=kind == "chord")
    elif kind == "drums":
        x = _drums(rng, n, sample_rate)
    elif kind == "noise":
        x = _noise_bursts(rng, n, sample_rate)
    else:
        x = _clicks(rng, n, sample_rate)
    peak = float(np.max(np.abs(x))) or 1.0
    level = 10 ** (rng.uniform(-20.0, -3.0) / 20)  # varied loudness, never clipping
    return (x * (level / peak)).astype(np.float32)


def _harmonic(rng: np.random.Generator, n: int, sr: int, chord: bool) -> np.ndarray:
    shapes = [[0, 4, 7], [0, 3, 7], [0, 4, 7, 11], [0, 3, 7, 10], [0, 5, 7]] if chord else [[0]]
    x, start = np.zeros(n), 0
    while start < n:
        length = min(n - start, int(sr * rng.uniform(0.4, 1.5)))
        t = np.arange(length) / sr
        root = rng.uniform(45, 76)
        rolloff = rng.uniform(0.8, 2.0)  # timbre: how fast the harmonics fall off
        seg = np.zeros(length)
        for interval in shapes[rng.integers(len(shapes))]:
            f0 = 440.0 * 2 ** ((root + interval - 69) / 12)
            for h in range(1, 9):
                if f0 * h < sr / 2:
                    seg += np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h**rolloff
        env = np.minimum(1.0, np.minimum(t / 0.02, (length / sr - t) / 0.05).clip(0))
        x[start : start + length] = seg * env
        start += length
    return x


def _decay_hit(rng: np.random.Generator, length: int, sr: int, kind: str) -> np.ndarray:
    t = np.arange(length) / sr
    if kind == "kick":  # pitch sweep 150 -> 45 Hz
        freq = 45 + 105 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.15)
    noise = rng.standard_normal(length)
    if kind == "hat":  # high-passed noise, very short
        return np.diff(noise, prepend=0.0) * np.exp(-t / 0.02) * 0.4
    return (noise * 0.7 + np.sin(2 * np.pi * 180 * t)) * np.exp(-t / 0.12)  # snare


def _drums(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    beat = 60.0 / rng.uniform(80, 160)
    x = np.zeros(n)
    for i in range(int(n / sr / (beat / 2)) + 1):  # eighth notes: hat on the offbeats
        pos = int(i * beat / 2 * sr)
        kind = "hat" if i % 2 else ("kick" if i % 4 == 0 else "snare")
        hit = _decay_hit(rng, min(n - pos, int(0.4 * sr)), sr, kind) * rng.uniform(0.5, 1.0)
        x[pos : pos + len(hit)] += hit
    return x


def _noise_bursts(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    period = 60.0 / rng.uniform(40, 75)
    x = 0.02 * rng.standard_normal(n)
    for i in range(int(n / sr / period) + 1):
        pos = int(i * period * sr)
        length = min(n - pos, int(sr * rng.uniform(0.1, 0.5)))
        if length <= 0:
            break
        # one-pole low-pass with a random cutoff gives noise of varied colour (short: a loop is fine)
        a, burst = rng.uniform(0.0, 0.98), rng.standard_normal(length)
        for k in range(1, length):
            burst[k] += a * burst[k - 1]
        t = np.arange(length) / sr
        burst *= np.minimum(1.0, t / 0.01) * np.exp(-t / rng.uniform(0.05, 0.3))
        x[pos : pos + length] += burst / (np.std(burst) + 1e-9)
    return x


def _clicks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    x = np.zeros(n)
    period = int(sr / rng.uniform(2, 20))
    for pos in range(0, n, period):
        x[pos : pos + int(rng.integers(1, 16))] += rng.uniform(-1, 1)  # clicks of varied width
    return x
