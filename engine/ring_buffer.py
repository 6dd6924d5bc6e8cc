"""A preallocated single-producer / single-consumer ring of float32 audio frames.

The generation thread writes PCM chunks; the audio callback (or the null sink's clock thread) reads
exactly one block per call. The realtime side must never allocate arrays, block or wait on a lock the
producer might hold, so the ring uses no lock at all: each side owns one monotonically growing frame
counter (`_written` belongs to the producer, `_read` to the consumer) and only ever reads the other's.
Under the GIL an attribute assignment is atomic and each thread's statements run in program order, so
publishing a counter *after* the copy means the other side never sees frames that are not there yet;
a stale value only makes a side see less data (or less space) than there is, never more.

Storage is frame-major `(capacity, channels)` although blocks arrive channel-major `(channels, n)`:
the transpose is paid by the producer, which has time to spare, so the callback's copy into
sounddevice's `(frames, channels)` buffer is a straight contiguous memcpy. Channels can never drift
apart after an underrun because whole frames are the unit of every copy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

POLL_S = 0.0005  # a waiting producer's nap once the next read may meet its deficit (at most)
POLLS_PER_BLOCK = 32  # ... and at least a 32nd of a block's time: big blocks are not polled at 2 kHz
BURST_S = 0.001  # reads this close together are one burst: a host asking for several blocks per cycle


class RingBuffer:
    """SPSC float32 ring: `write` from one producer thread, `read_into` from one consumer thread."""

    def __init__(self, channels: int, capacity: int, sample_rate: int) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 frame, got {capacity!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate!r}")
        self.channels = int(channels)
        self.capacity = int(capacity)
        # The rate of the frames held; a resampling sink sets it to the device rate it feeds.
        self.sample_rate = int(sample_rate)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._written = 0  # total frames ever written; assigned by the producer only
        self._read = 0  # total frames ever read; assigned by the consumer only
        self._ended = False  # producer said "no more audio": later silence is not an underrun
        # Consumer-owned statistics. An underrun *event* is one dropout (played -> starved), however
        # many reads it lasts; underrun_frames is the total silence inserted by all dropouts.
        self.underrun_frames = 0
        self.underrun_events = 0
        self._starved = False
        self.idle_frames = 0  # zero-filled before the first write or after mark_end(): expected silence
        # Rebuffering: after a dropout, hold playback (silence, counted as underrun) until this many
        # frames are queued again, so a slow generator gives clean pauses instead of random stutter.
        # 0 plays whatever arrives.
        self.rebuffer_frames = 0
        self.rebuffer_events = 0
        # Frames left after a read, at the lowest since the producer last reset it to `capacity`
        # (negative: that read came up short). Written by the consumer, read and reset by the producer.
        self.low_water = self.capacity
        # What the consumer reads at once (0 before the first read): a block, or several blocks back to
        # back where the host's cycle is longer than one (JACK at a period above the stream's blocksize).
        # The larger of this burst and the one before: a catch-up after a stall (the null sink reads the
        # blocks it missed back to back) is forgotten two bursts later. Consumer-owned; the producer's
        # waits time their naps by it, and poll at a 32nd of a block's time (`block`: the last read).
        self.burst = self.block = 0
        self._burst_frames, self._last_burst, self._burst_time = 0, 0, -1.0
        # Set by the sink when its consumer is gone for good (a device that vanished): from then on every
        # wait returns False at once instead of waiting for reads that will never come.
        self.failure: str | None = None

    def set_rate(self, sample_rate: int) -> None:
        """Hold frames at another rate (a resampling sink's device rate), keeping the same seconds of
        room: sizes and thresholds are then all counted at that rate. Only before any write."""
        if self._written:
            raise RuntimeError("a ring's rate is set before it holds audio")
        self.capacity = math.ceil(self.capacity * int(sample_rate) / self.sample_rate)
        self.sample_rate = int(sample_rate)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)

    def add_room(self, frames: int) -> None:
        """Hold `frames` more (the device's block, known once its sink is open). Only before any write."""
        if self._written:
            raise RuntimeError("a ring's room is set before it holds audio")
        self.capacity += int(frames)
        self.low_water = self.capacity
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)

    # ---- shared views -------------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Frames ready for the consumer."""
        return self._written - self._read

    @property
    def space(self) -> int:
        """Frames the producer can write without overwriting unread audio."""
        return self.capacity - (self._written - self._read)

    @property
    def seconds(self) -> float:
        """Audio buffered ahead of the consumer, in seconds at `sample_rate`."""
        return self.available / self.sample_rate

    @property
    def frames_written(self) -> int:
        return self._written

    @property
    def frames_read(self) -> int:
        return self._read

    # ---- producer side ------------------------------------------------------------------------
    def write(self, block: np.ndarray) -> int:
        """Copy as much of `block` (channels, n) as fits; never blocks. Returns the frames written."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim == 1 and self.channels == 1:
            block = block[np.newaxis, :]
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, frames) block, got shape {block.shape}")
        n = min(block.shape[1], self.space)
        if n <= 0:
            return 0
        start = self._written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = block[:, :first].T
        if n > first:
            self._buf[: n - first] = block[:, first:n].T
        self._ended = False
        self._written += n  # publish only after the frames are in place
        return n

    def fail(self, reason: str) -> None:
        """The consumer stopped for good (`reason`, one line): release every producer wait, now and later."""
        self.failure = reason

    def mark_end(self) -> None:
        """The producer has finished: the silence after the last frame is not counted as underrun."""
        self._ended = True

    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool:
        """Sleep until `frames` can be written (True), `timeout` seconds pass or the consumer failed (False)."""
        if frames > self.capacity:
            raise ValueError(f"cannot wait for {frames} frames in a ring of {self.capacity}")
        return self._wait_until(lambda: frames - self.space, timeout)

    def wait_until_at_most(self, frames: int, timeout: float | None = None) -> bool:
        """Sleep until no more than `frames` are queued (True), or `timeout` passes or it failed (False)."""
        return self._wait_until(lambda: self.available - max(frames, 0), timeout)

    def wait_until_empty(self, timeout: float | None = None) -> bool:
        """Sleep until the consumer has read everything written (True), or `timeout` passes or it failed (False)."""
        return self._wait_until(lambda: self.available, timeout)

    def _wait_until(self, missing: Callable[[], int], timeout: float | None) -> bool:
        """Poll until `missing()` frames reach 0, so the realtime side never has to signal anything (that
        would mean taking a lock). The consumer reads a burst at a time (`burst`), at a phase the producer
        cannot see: the wait sleeps through the bursts that surely come before the deficit is met (all
        but the last), then polls for the last one, every POLL_S or a 32nd of a block's time if longer.
        Sleeping the whole deficit's time instead overslept that read by up to a block (8 ms at 256
        frames / 32 kHz): the producer then missed the next read too, and `--buffer auto` paid a block
        more of lead for it (engine/lead.py)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (deficit := missing()) > 0:
            if self.failure is not None:
                return False
            burst = self.burst or 1  # before the first read: the deficit's own time
            poll = max(POLL_S, self.block / self.sample_rate / POLLS_PER_BLOCK)
            nap = min(max((math.ceil(deficit / burst) - 1) * burst / self.sample_rate, poll), 0.05)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                nap = min(nap, left)
            time.sleep(nap)
        return True

    # ---- consumer side (realtime) -------------------------------------------------------------
    def read_into(self, out: np.ndarray) -> int:
        """Fill `out` (frames, channels) in place; zero-fill the shortfall. Returns frames read.

        Copies only: no array is allocated, nothing blocks, no lock is taken.
        """
        frames = out.shape[0]
        now = time.monotonic()
        self.block = frames
        if now - self._burst_time < BURST_S:
            self._burst_frames += frames
        else:  # a new burst: the one before is complete
            self._last_burst, self._burst_frames = self._burst_frames, frames
        self._burst_time = now
        self.burst = max(self._burst_frames, self._last_burst)
        avail = self._written - self._read
        if avail - frames < self.low_water and self._written and not self._ended:
            self.low_water = avail - frames  # the closest the playing ring came to running dry (engine/lead.py)
        if self._starved and self.rebuffer_frames and avail < self.rebuffer_frames and not self._ended:
            avail = 0  # still refilling after a dropout: play nothing yet
        n = frames if avail >= frames else avail
        if n > 0:
            start = self._read % self.capacity
            first = self.capacity - start
            if first >= n:
                out[:n] = self._buf[start : start + n]
            else:
                out[:first] = self._buf[start:]
                out[first:n] = self._buf[: n - first]
        if n < frames:
            out[n:] = 0.0
            missing = frames - n
            if self._written == 0 or self._ended:
                self.idle_frames += missing
            else:
                self.underrun_frames += missing
                if not self._starved:
                    self.underrun_events += 1
                    self.rebuffer_events += 1 if self.rebuffer_frames else 0
                    self._starved = True
        else:
            self._starved = False
        self._read += n  # publish after the copy so the producer never overwrites unread frames
        return n


class RingWriter:
    """The producer's handle on a ring: model-rate PCM in, ring-rate frames out.

    When the ring runs at another rate than the model (a device that refuses 32 kHz), a soxr
    streaming resampler converts here, on the producer's thread, so the consumer only ever copies.
    """

    def __init__(self, ring: RingBuffer, sample_rate: int) -> None:
        self.ring = ring
        self.sample_rate = int(sample_rate)
        self._resampler = None
        self._pending: np.ndarray | None = None  # resampled (channels, n) frames the ring had no room for
        self._flushed = False
        if self.sample_rate != ring.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, ring.sample_rate, ring.channels, dtype="float32")

    @property
    def resampling(self) -> bool:
        return self._resampler is not None

    def _push_pending(self) -> bool:
        if self._pending is not None:
            done = self.ring.write(self._pending)
            self._pending = self._pending[:, done:] if done < self._pending.shape[1] else None
        return self._pending is None

    def write(self, block: np.ndarray) -> int:
        """Queue model-rate PCM (channels, n); never blocks. Returns the input frames taken (0..n).

        When resampling, a block is taken whole or not at all (a streaming resampler cannot give
        input back); resampled frames that do not fit wait here and go in first on the next call.
        """
        if self._resampler is None:
            return self.ring.write(block)
        if not self._push_pending():
            return 0
        block = np.asarray(block, dtype=np.float32).reshape(self.ring.channels, -1)
        out = self._resampler.resample_chunk(np.ascontiguousarray(block.T))
        self._pending = out.T if len(out) else None
        self._push_pending()
        return block.shape[1]

    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool:
        """Sleep until `frames` model-rate frames can be written (True) or `timeout` passes (False). More
        than the ring holds less one burst of reads is waited for only up to that: waiting for the whole
        ring to be free would let it play dry first (a fixed --buffer under a decoder chunk dropped out
        on every chunk); the caller writes what fits and waits again for the rest."""
        need = frames
        if self._resampler is not None:
            need = math.ceil(frames * self.ring.sample_rate / self.sample_rate) + 1
        if self._pending is not None:
            need += self._pending.shape[1]
        ring = self.ring  # before the first read the burst is not known: half the ring then
        return ring.wait_for_space(min(need, max(1, ring.capacity - (ring.burst or ring.capacity // 2))), timeout)

    def finish(self, timeout: float | None = None) -> bool:
        """End of audio: push everything, the resampler's tail too (27 ms at 44.1 kHz), then mark the
        ring's end. Waits for room, not for playback (the device may not have started yet); False if
        `timeout` passed or the ring failed first (call again: the tail is flushed only once)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._resampler is not None and not self._flushed:
            self._flushed = True  # soxr refuses a second last=True
            tail = self._resampler.resample_chunk(np.zeros((0, self.ring.channels), np.float32), last=True)
            if len(tail):
                parts = [tail.T] if self._pending is None else [self._pending, tail.T]
                self._pending = np.concatenate(parts, axis=1)
        while not self._push_pending():
            if self.ring.failure is not None or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(0.002)
        self.ring.mark_end()  # the last, partial block must not count as an underrun
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """`finish`, then wait until the device has consumed everything."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.finish(timeout):
            return False
        return self.ring.wait_until_empty(None if deadline is None else max(0.0, deadline - time.monotonic()))
