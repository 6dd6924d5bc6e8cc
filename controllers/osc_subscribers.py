"""OSC subscriptions that expire: who is sent status, values, meter readings and notices (controllers/osc.py).

A subscription lasts `seconds` (SUBSCRIPTION_SECONDS) from the last datagram its address sent (a
subscribe, a ping, a control: anything the server admits), so a surface that went away (a script that
ended, a phone app restarted on another port) stops being sent status within that time; a surface that
sends nothing for that long renews with /musicsteer/subscribe or /musicsteer/ping. MAX_SUBSCRIBERS are
held at most; a new one then takes the place of the one heard from longest ago, so a later surface is
never locked out. An address pushed out that way is remembered for `seconds` (up to MAX_EVICTED of them):
any datagram from it (its next ping) subscribes it again, so a churn of subscribers silences a surface
that keeps pinging only while the churn lasts.

The full state (status, every value) is what a subscribe makes the engine send, ~1.3 kB in ~10 datagrams
for a 28-byte request, to whatever sender address the datagram claims. So it is sent at most once per
RESYNC_SECONDS per address, and at most DUMPS_PER_SECOND (a burst of DUMP_BURST) across all addresses: a
subscriber past that budget is owed its state and gets it at a later status tick, when the budget allows
(it hears the periodic status meanwhile). Whatever the number of source ports, the bytes sent for
subscribes stay about DUMPS_PER_SECOND full states a second. The same holds for the one other reply much
larger than its request, /musicsteer/status (~0.5-1 kB for 24 bytes): STATUS_REPLIES_PER_SECOND in
total (controllers/osc.py; past it the request is dropped unanswered, counted `busy`).
Thread-safe: the server thread adds and renews, the sender thread reads.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

MAX_SUBSCRIBERS = 32  # a bound: UDP senders are cheap to fake
MAX_EVICTED = 1024  # addresses pushed out by a newer subscriber, remembered (for `seconds`) so that they come back
SUBSCRIPTION_SECONDS = 60.0  # a subscriber not heard from for this long is dropped
RESYNC_SECONDS = 1.0  # a subscribe repeated within this is a renewal only: the full state is not sent again
DUMPS_PER_SECOND = 4.0  # full states sent a second, all addresses together (a token bucket)
DUMP_BURST = 4.0  # full states that may go at once (the bucket's size)
STATUS_REPLIES_PER_SECOND = 20.0  # answers to /musicsteer/status (~0.5-1 kB each for 24 bytes), all senders together


class Budget:
    """A token bucket: `rate` a second, at most `burst` at once. Not locked: one thread takes from it."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self._tokens, self._refilled = self.burst, time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """One token, if there is one (refilled for the time since the last call)."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Subscribers:
    """Subscribed (host, port) addresses, least recently heard first. `counters` (the server's, shared)
    gains subscribers_dropped (made room for a new one), subscribers_expired (not heard from in time),
    subscribers_restored (a dropped one heard from again) and dumps_deferred (a full state put off: the
    budget was spent)."""

    def __init__(self, counters: collections.Counter[str], lock: threading.Lock,
                 seconds: float = SUBSCRIPTION_SECONDS) -> None:
        self.seconds = float(seconds)
        self._heard: collections.OrderedDict[Any, float] = collections.OrderedDict()  # address -> monotonic s
        self._synced: dict[Any, float] = {}  # address -> when it was last sent the full state
        self._evicted: collections.OrderedDict[Any, float] = collections.OrderedDict()  # address -> when pushed out
        self._owed: dict[Any, None] = {}  # held subscribers owed the full state (the budget was spent)
        self._dumps = Budget(DUMPS_PER_SECOND, DUMP_BURST)  # taken under the lock
        self._counters, self._lock = counters, lock

    def heard(self, address: Any, now: float | None = None) -> bool:
        """A datagram from `address`: a subscription it holds lasts `seconds` from now; one it lost to a newer
        subscriber (within `seconds`) is taken up again. Whether to send it the full state now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if address in self._heard:
                self._heard[address] = now
                self._heard.move_to_end(address)
                return False
            when = self._evicted.pop(address, None)
            if when is None or now - when > self.seconds:
                return False
            self._counters.update(("subscribers_restored",))
            return self._hold(address, now)

    def add(self, address: Any) -> bool:
        """Subscribe `address` (or renew it); whether to send it the full state now."""
        with self._lock:
            return self._hold(address, time.monotonic())

    def _hold(self, address: Any, now: float) -> bool:
        """(under the lock) Hold `address` as heard `now`, pushing out the longest silent if full; whether
        to send it the full state now (else, if it is due one, it is owed it)."""
        self._evicted.pop(address, None)
        if address not in self._heard and len(self._heard) >= MAX_SUBSCRIBERS:
            dropped, _ = self._heard.popitem(last=False)  # the one heard from longest ago makes room
            self._forget(dropped)
            self._evicted[dropped] = now
            while len(self._evicted) > MAX_EVICTED:
                self._evicted.popitem(last=False)
            self._counters.update(("subscribers_dropped",))
        self._heard[address] = now
        self._heard.move_to_end(address)
        if now - self._synced.get(address, -RESYNC_SECONDS) < RESYNC_SECONDS or address in self._owed:
            return False
        if not self._dumps.take(now):
            self._owed[address] = None
            self._counters.update(("dumps_deferred",))
            return False
        self._synced[address] = now
        return True

    def owed(self) -> list[Any]:
        """The subscribers owed the full state that the budget allows now, newest first (a flood of forged
        subscribes is older than the surface that subscribes after it); each one's full state is then due:
        send it. The sender thread calls this at each status tick."""
        now = time.monotonic()
        with self._lock:
            due = []
            while self._owed and self._dumps.take(now):
                address = next(reversed(self._owed))
                del self._owed[address]
                self._synced[address] = now
                due.append(address)
            return due

    def _forget(self, address: Any) -> None:
        self._synced.pop(address, None)
        self._owed.pop(address, None)

    def remove(self, address: Any) -> None:
        """Unsubscribe `address` (it is not taken up again by its next datagram)."""
        with self._lock:
            self._heard.pop(address, None)
            self._evicted.pop(address, None)
            self._forget(address)

    def live(self) -> list[Any]:
        """The addresses heard from within `seconds`, least recently heard first; the rest are dropped."""
        with self._lock:
            cutoff = time.monotonic() - self.seconds
            while self._heard and next(iter(self._heard.values())) < cutoff:
                expired, _ = self._heard.popitem(last=False)
                self._forget(expired)
                self._counters.update(("subscribers_expired",))
            while self._evicted and next(iter(self._evicted.values())) < cutoff:
                self._evicted.popitem(last=False)
            return list(self._heard)

    def __bool__(self) -> bool:
        return bool(self._heard)

    def __iter__(self):  # noqa: ANN204 - a snapshot, safe to iterate while others subscribe
        with self._lock:
            return iter(list(self._heard))


__all__ = ["DUMPS_PER_SECOND", "MAX_EVICTED", "MAX_SUBSCRIBERS", "STATUS_REPLIES_PER_SECOND", "SUBSCRIPTION_SECONDS",
           "Budget", "Subscribers"]
