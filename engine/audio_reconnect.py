"""A session's output device that may go away and come back (issue 28): the session never ends for it.

`ReconnectingSink` is what a session plays a real device through. It is the first `PortAudioSink`'s
producer side (its ring, its resampler, its DAC clock: the lead, the take and knob → heard never see a
change) with a consumer that changes under it:

    the device's own stream ──lost──▶ the clock (a NullSink on the same ring and clock: generation,
        ▲                              the recording and the take's log go on at real time, no gap)
        │                                  │ every RETRY_S: the same device, by the name and host API
        └── back: a child process plays it ◀┘ resolved at start, tried in a child (engine/audio_player.py)

A loss is told at once, one line through the session's `notify` (level "error": the status line, OSC
`/musicsteer/error`, the page, as a lost MIDI port is told), and so is a return ("warning", "… is back:
playing again"). A failed attempt is no notice: it is the `lost` line (status `device_lost`: how long,
how many tries, why the last failed) until the next. One supervisor thread makes every swap: the old
consumer has stopped reading the ring before the next one starts (the ring has one consumer). A stream
that cannot start at all (its server died after it was opened) is a loss before the first block. What
still ends a session is `error`: a consumer that raised (a bug), not a device.

After a return the device is played through the child for the rest of the session: this process's
PortAudio cannot open it again (engine/audio_player.py says why). The child adds `FIFO_BLOCKS` blocks,
counted in `latency` and in the DAC stamps, so knob → heard stays right; the lead keeps the block
counted at start (a server back with another period plays, but the lead's margin is the old one's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from .audio_out import NullSink, PortAudioSink, open_sink
from .audio_player import ChildPlayer
from .errors import MusicsteerError
from .ring_buffer import RingBuffer

RETRY_S = 1.5  # seconds between tries of a lost device


class ReconnectingSink:
    """`first` (an open, unstarted PortAudioSink) behind the AudioSink interface, kept playing across the
    device's losses. notify(level, text): tell the performer (the session's). Counters add up over every
    consumer it has had; `losses` and `returns` count the device's going and coming."""

    def __init__(self, first: PortAudioSink, notify: Callable[[str, str], None], retry_s: float = RETRY_S) -> None:
        self.first, self.notify, self.retry_s = first, notify, retry_s
        self.ring, self.clock, self.blocksize = first.ring, first.clock, first.blocksize
        self.sample_rate, self.device_rate, self.device_name = first.sample_rate, first.device_rate, first.device_name
        self.latency = first.latency
        self.losses = self.returns = self.attempts = 0
        self._why = ""  # why the last try failed
        self._away = False
        self._consumers: list = [first]  # every consumer so far; the last reads the ring now
        self._lost_reason: str | None = None  # set by a consumer that lost the device; the supervisor acts
        self._lost_at = 0.0
        self._wake, self._stop = threading.Event(), threading.Event()
        self._supervisor: threading.Thread | None = None
        first.on_lost = self._on_lost

    # -- the producer side: the first sink's, for the whole session ----------------------------------
    def write(self, block: np.ndarray) -> int:
        return self.first.write(block)

    def wait_for_space(self, frames: int, timeout: float | None = None) -> bool:
        return self.first.wait_for_space(frames, timeout)

    def finish(self, timeout: float | None = None) -> bool:
        return self.first.finish(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        return self.first.drain(timeout)

    @property
    def resampling(self) -> bool:
        return self.first.resampling

    @property
    def lost(self) -> str | None:
        """While the device is away: one line, how long, what goes on, how the tries fare; else None."""
        if not self._away:
            return None
        tries = f"{self.attempts} tries, the last: {self._why}" if self.attempts else "trying"
        return (f"output device {self.device_name!r} away {time.monotonic() - self._lost_at:.0f} s, generating "
                f"and recording on the clock; {tries}; retrying every {self.retry_s:g} s")

    # -- counters over every consumer -------------------------------------------------------------------
    @property
    def callbacks(self) -> int:
        return sum(c.callbacks for c in self._consumers)

    @property
    def output_underflows(self) -> int:
        return sum(c.output_underflows for c in self._consumers)

    @property
    def callback_errors(self) -> int:
        return sum(getattr(c, "callback_errors", 0) for c in self._consumers)

    @property
    def error(self) -> str | None:
        """The output failed for good (a consumer raised): the session ends. A lost device is not one."""
        return next((c.error for c in self._consumers if getattr(c, "error", None)), None)

    @property
    def underrun_events(self) -> int:
        return self.ring.underrun_events

    @property
    def underrun_frames(self) -> int:
        return self.ring.underrun_frames

    @property
    def counters(self) -> dict[str, int]:
        return {**self.first.counters, "output_underflows": self.output_underflows,
                "callback_errors": self.callback_errors}

    # -- running ----------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.first.start()
        except MusicsteerError as exc:  # gone between the open and the first block
            self._on_lost(str(exc))
        self._supervisor = threading.Thread(target=self._supervise, name="musicsteer-audio-reconnect", daemon=True)
        self._supervisor.start()

    def _on_lost(self, reason: str) -> None:
        """A consumer lost the device (its own thread): the supervisor swaps it for the clock at once."""
        self._lost_reason = reason
        self._wake.set()

    def _supervise(self) -> None:
        """The one thread that swaps consumers: lost → the clock; every retry_s a try; back → the child."""
        next_try = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            current = self._consumers[-1]
            if isinstance(current, ChildPlayer) and current.lost is not None and self._lost_reason is None:
                self._lost_reason = current.lost
            if self._lost_reason is not None and not isinstance(current, NullSink):
                self._to_clock(current, self._lost_reason)
                next_try = time.monotonic() + self.retry_s
            elif isinstance(current, NullSink) and time.monotonic() >= next_try:
                self._try()
                next_try = time.monotonic() + self.retry_s

    def _to_clock(self, current, reason: str) -> None:
        if isinstance(current, ChildPlayer):
            current.stop()
        clock = NullSink(self.ring, self.device_rate, self.ring.channels, self.blocksize, clock=self.clock)
        clock.start()
        self._consumers.append(clock)
        self.losses += 1
        self._lost_reason, self._lost_at, self.attempts, self._away = None, time.monotonic(), 0, True
        self.notify("error", f"{reason}; still generating and recording, paced by the clock; "
                             f"retrying the device every {self.retry_s:g} s")

    def _try(self) -> None:
        first = self.first
        self.attempts += 1
        player = ChildPlayer(self.ring, self.clock, self.device_name, first.host_api, first.host_block,
                             first.stall_s)
        why = player.open(self._stop)
        away = time.monotonic() - self._lost_at
        if why is not None:
            self._why = why
            return
        clock = self._consumers[-1]
        clock.stop()  # its thread has ended: the ring is the player's alone from here
        player.start()
        self._consumers.append(player)
        self.latency, self._away = player.latency, False
        self.returns += 1
        self.notify("warning", f"output device {self.device_name!r} is back: playing again "
                               f"(away {away:.1f} s, {self.attempts} tries)")

    def stop(self) -> None:
        """End everything; never blocks on a lost stream (the first is abandoned, a child is killed)."""
        self._stop.set()
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for consumer in reversed(self._consumers):
            consumer.stop()


def open_output(spec: str | int | None, ring: RingBuffer, sample_rate: int, channels: int,
                blocksize: int | str = "auto", resample: bool = True,
                notify: Callable[[str, str], None] | None = None) -> PortAudioSink | NullSink | ReconnectingSink:
    """`open_sink`, and with `notify` a real device comes back as a ReconnectingSink (the null clock
    cannot go away)."""
    sink = open_sink(spec, ring, sample_rate, channels, blocksize, resample)
    if notify is not None and isinstance(sink, PortAudioSink):
        return ReconnectingSink(sink, notify)
    return sink
