"""OSC subscriptions that expire: who is sent status, values, meter readings and notices (controllers/osc.py).

A subscription lasts `seconds` (SUBSCRIPTION_SECONDS) from the last datagram its address sent (a
subscribe, a ping, a control: anything the server admits), so a surface that went away (a script that
ended, a phone app restarted on another port) stops being sent status within that time; a surface that
sends nothing for that long renews with /musicsteer/subscribe or /musicsteer/ping. MAX_SUBSCRIBERS are
held at most; a new one then takes the place of the one heard from longest ago, so a later surface is
never locked out. A subscribe sends the subscriber the full state (status, every value) at most once
per RESYNC_SECONDS: a flood of subscribes cannot turn into a flood of state dumps (to a forged sender
address, say). Thread-safe: the server thread adds and renews, the sender thread reads.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

MAX_SUBSCRIBERS = 32  # a bound: UDP senders are cheap to fake
SUBSCRIPTION_SECONDS = 60.0  # a subscriber not heard from for this long is dropped
RESYNC_SECONDS = 1.0  # a subscribe repeated within this is a renewal only: the full state is not sent again


class Subscribers:
    """Subscribed (host, port) addresses, least recently heard first. `counters` (the server's, shared)
    gains subscribers_dropped (made room for a new one) and subscribers_expired (not heard from in time)."""

    def __init__(self, counters: collections.Counter[str], lock: threading.Lock,
                 seconds: float = SUBSCRIPTION_SECONDS) -> None:
        self.seconds = float(seconds)
        self._heard: collections.OrderedDict[Any, float] = collections.OrderedDict()  # address -> monotonic s
        self._synced: dict[Any, float] = {}  # address -> when it was last sent the full state
        self._counters, self._lock = counters, lock

    def heard(self, address: Any, now: float | None = None) -> None:
        """A datagram from `address`: a subscription it holds lasts `seconds` from now."""
        with self._lock:
            if address in self._heard:
                self._heard[address] = time.monotonic() if now is None else now
                self._heard.move_to_end(address)

    def add(self, address: Any) -> bool:
        """Subscribe `address` (or renew it); whether to send it the full state now."""
        now = time.monotonic()
        with self._lock:
            if address not in self._heard and len(self._heard) >= MAX_SUBSCRIBERS:
                dropped, _ = self._heard.popitem(last=False)  # the one heard from longest ago makes room
                self._synced.pop(dropped, None)
                self._counters.update(("subscribers_dropped",))
            self._heard[address] = now
            self._heard.move_to_end(address)
            if now - self._synced.get(address, -RESYNC_SECONDS) < RESYNC_SECONDS:
                return False
            self._synced[address] = now
            return True

    def remove(self, address: Any) -> None:
        with self._lock:
            self._heard.pop(address, None)
            self._synced.pop(address, None)

    def live(self) -> list[Any]:
        """The addresses heard from within `seconds`, least recently heard first; the rest are dropped."""
        with self._lock:
            cutoff = time.monotonic() - self.seconds
            while self._heard and next(iter(self._heard.values())) < cutoff:
                expired, _ = self._heard.popitem(last=False)
                self._synced.pop(expired, None)
                self._counters.update(("subscribers_expired",))
            return list(self._heard)

    def __bool__(self) -> bool:
        return bool(self._heard)

    def __iter__(self):  # noqa: ANN204 - a snapshot, safe to iterate while others subscribe
        with self._lock:
            return iter(list(self._heard))


__all__ = ["MAX_SUBSCRIBERS", "SUBSCRIPTION_SECONDS", "Subscribers"]
