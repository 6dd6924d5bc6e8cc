"""The level and spectrum of what is playing, for surfaces that show it (the browser page's meter).

The decode thread hands every block of PCM here as it goes to the ring (`add`: a few tens of µs for a
5-frame chunk); a surface asks for the block being played now (`at`, by the ring's read position), so
the meter moves with the sound, not with generation, which runs up to `--buffer` ahead.

Per block: RMS and peak in dBFS over all channels, and `BANDS` band levels in dB from a Hann-windowed
FFT of the block's last `FFT` samples (mono mix), bands spaced by octave thirds from 50 Hz to half the
sample rate (the layout of a graphic analyser; ISO 266 style log spacing).
"""

from __future__ import annotations

import collections
import itertools
import threading

import numpy as np

BANDS = 24
FFT = 2048
FLOOR_DB = -100.0  # silence reads as this, not -inf (JSON has no infinity)
HISTORY = 256  # blocks kept: 256 one-frame blocks is 5 s, more than any lead


def _db(x: float) -> float:
    return max(FLOOR_DB, 20.0 * float(np.log10(max(x, 1e-12))))


class LevelHistory:
    """Levels of the last HISTORY blocks, by the model-rate sample each block ends at. Thread-safe:
    one writer (the decode thread), any readers."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._blocks: collections.deque[tuple[int, dict]] = collections.deque(maxlen=HISTORY)
        self._end = 0
        self._lock = threading.Lock()
        n = FFT // 2 + 1
        freqs = np.fft.rfftfreq(FFT, 1.0 / sample_rate)
        edges = np.geomspace(50.0, sample_rate / 2, BANDS + 1)
        # FFT bins per band; a band narrower than one bin takes its nearest bin (never empty).
        bands = list(itertools.pairwise(edges))
        self._bins = [np.flatnonzero((freqs >= lo) & (freqs < hi)) for lo, hi in bands]
        self._bins = [b if b.size else np.array([min(n - 1, int(np.searchsorted(freqs, lo)))])
                      for b, (lo, _) in zip(self._bins, bands, strict=True)]
        self.centres = [float(np.sqrt(lo * hi)) for lo, hi in bands]
        self._window = np.hanning(FFT).astype(np.float32)
        self._gain = 2.0 / self._window.sum()  # a full-scale sine reads 0 dB in its band

    def add(self, pcm: np.ndarray) -> None:
        """A block of PCM, (channels, samples) float32 at the model's rate, in playing order."""
        if pcm.shape[-1] == 0:
            return
        rms, peak = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))), float(np.max(np.abs(pcm)))
        mono = pcm.mean(axis=0)[-FFT:]
        frame = np.zeros(FFT, np.float32)
        frame[FFT - len(mono):] = mono
        magnitude = np.abs(np.fft.rfft(frame * self._window)) * self._gain
        bands = [round(_db(float(magnitude[b].max())), 1) for b in self._bins]
        level = {"rms_db": round(_db(rms), 1), "peak_db": round(_db(peak), 1), "bands": bands}
        with self._lock:
            self._end += pcm.shape[-1]
            self._blocks.append((self._end, level))

    def at(self, sample: int) -> dict:
        """The levels of the block holding model-rate sample `sample` (the oldest kept if it is older;
        silence before the first block): {"rms_db", "peak_db", "bands": [BANDS dB values]}."""
        with self._lock:
            blocks = list(self._blocks)
        for end, level in blocks:
            if sample < end:
                return level
        return {"rms_db": FLOOR_DB, "peak_db": FLOOR_DB, "bands": [FLOOR_DB] * BANDS}


__all__ = ["BANDS", "FLOOR_DB", "LevelHistory"]
