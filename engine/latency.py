"""Knob → heard: from a change's arrival to the moment the first sample made after it reaches the DAC.

The sink stamps every block it plays (`DacClock.mark`): how many ring frames were read before it, and
the monotonic time its first sample reaches the DAC — PortAudio's `outputBufferDacTime - currentTime`
(the same stream clock) added to the time of the callback; the null sink's block is "played" on its
tick. The last `size` stamps live in preallocated arrays, written without allocating or locking.

A change applied before token `step` is first in the frame that token completes: frame `step - max_delay`
(the delay pattern: at that token the last codebook samples that frame, Copet et al. 2023 §2.2), the
first frame holding a code chosen after the change, whose first sample is where it is heard (codebook 0
of the change's own frame, `step`, plays `max_delay` frames later: 60 ms for MusicGen). That sample
is `frame × hop` in the stream of PCM the session plays (the audio prompt is not played), ring frame
`× device rate / model rate` when the sink resamples. `KnobLatency` keeps each applied change as
(that ring frame, its arrival) until the clock has played it, then as a latency.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from .events import Change


class DacClock:
    """When each ring frame reached the DAC. `mark` on the realtime thread; `heard_at` anywhere."""

    def __init__(self, rate: int, size: int = 4096) -> None:
        self.rate = rate  # ring frames per second (the device's rate)
        self._starts = np.zeros(size, np.int64)  # ring frames read before block k
        self._times = np.zeros(size, np.float64)  # monotonic seconds block k's first frame is at the DAC
        self.count = 0  # blocks stamped; published after the stamp is written

    def mark(self, start: int, dac_time: float) -> None:
        """Block number `count` starts with ring frame `start` and reaches the DAC at `dac_time`."""
        j = self.count % len(self._starts)
        self._starts[j] = start
        self._times[j] = dac_time
        self.count += 1

    @property
    def oldest(self) -> int:
        """The first ring frame still stamped (earlier ones were played too long ago to place)."""
        count, size = self.count, len(self._starts)
        return int(self._starts[max(0, count - size + 1) % size]) if count else 0

    def heard_at(self, frame: int) -> float | None:
        """Monotonic time ring frame `frame` reached the DAC; None until a later block shows it was played
        (or if it was played so long ago that its stamp is gone)."""
        count, size = self.count, len(self._starts)
        order = np.arange(max(0, count - size + 1), count) % size  # oldest first; the newest may be mid-write
        starts = self._starts[order]
        k = int(np.searchsorted(starts, frame, side="right")) - 1  # the last block starting at or before it
        if k < 0 or k + 1 >= len(starts) or starts[k + 1] <= frame:
            return None
        return float(self._times[order[k]]) + (frame - int(starts[k])) / self.rate


class KnobLatency:
    """Arrival → DAC of every applied change that has an arrival time (live ones: OSC, MIDI, the web page).

    hop: model samples per frame; model_rate: the model's sample rate; delay: the delay pattern's
    largest codebook delay (frames). Figures in milliseconds."""

    def __init__(self, clock: DacClock, hop: int, model_rate: int, delay: int, keep: int = 4096) -> None:
        self.clock, self.hop, self.model_rate, self.delay = clock, hop, model_rate, delay
        self._pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=keep)
        self.seconds: collections.deque[float] = collections.deque(maxlen=keep)
        self.lost = 0  # changes whose frame's stamp was gone when looked for (update() is called often)

    def applied(self, step: int, changes: Iterable[Change]) -> None:
        """Changes applied before token `step` (the generation thread)."""
        frame = max(0, step - self.delay)
        index = frame * self.hop * self.clock.rate // self.model_rate
        for change in changes:
            if change.arrived:
                self._pending.append((index, change.arrived))

    def update(self) -> None:
        """Turn the changes the device has played since into latencies (any one thread)."""
        while self._pending:
            index, arrived = self._pending[0]
            heard = self.clock.heard_at(index)
            if heard is None and index >= self.clock.oldest:
                return  # not played yet
            self._pending.popleft()
            if heard is None:
                self.lost += 1  # played before anyone looked, too long ago to place: not guessed
            else:
                self.seconds.append(max(0.0, heard - arrived))

    def summary(self) -> dict[str, float]:
        """{"median_ms", "p95_ms", "changes"} of the latencies measured so far ({} before the first)."""
        self.update()
        if not self.seconds:
            return {}
        ms = np.asarray(self.seconds) * 1000.0
        return {"median_ms": round(float(np.median(ms)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
                "changes": len(ms)}

