"""What the engine tells OSC surfaces unasked: subscribers and `--osc-feedback` targets (controllers/osc.py).

Every applied change, whatever moved it, is echoed on its control's own address (the row's first, which
takes its whole value) with the value it was set to, and as /musicsteer/changed; meter readings, notices
(/musicsteer/error, /musicsteer/warning) and a status each `status_interval` go to the same list. A new
subscriber or target gets the full state (a status, then every value) so that its widgets start in sync;
one whose state the budget put off (osc_subscribers.py) gets it at a later status tick.

All of it leaves from a socket of its own that reads nothing: an engine or a surface that answers it (with
an error, a status) talks to no one, never in a loop. A value equal to the one last echoed is not echoed
again, so two engines fed each other's echoes stop at once instead of trading the same value every token.

One sender thread does the sending, fed by a queue that the engine listener (the generation thread,
between tokens) only appends to; replies that come after their datagram was handled (a take opened on
the takes thread) leave through it too, from the server's own socket (they are replies).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pythonosc.osc_message_builder import OscMessageBuilder

from musicsteer.engine.errors import one_line
from musicsteer.engine.events import Applied, Event, MeterReading, Notice
from musicsteer.engine.params import LIVE

from . import osc_args
from .feedback import applied_values, current_values

if TYPE_CHECKING:
    from musicsteer.engine.session import StreamingSession

    from .osc_subscribers import Subscribers

PREFIX = "/musicsteer"
_STOP = object()


def send(sock: socket.socket, clients: Any, address: str, args: Any, count: Callable[..., None]) -> None:
    """Send one message from `sock` to an (ip, port), or to each of a list of them; `count` is told
    replies_sent per datagram sent, send_errors for arguments python-osc cannot encode."""
    try:
        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(*osc_args.typed(arg))
        dgram = builder.build().dgram
        for client in clients if isinstance(clients, list) else [clients]:
            with contextlib.suppress(OSError):  # one unreachable subscriber must not starve the rest
                sock.sendto(dgram, client)
                count("replies_sent")
    except Exception:  # noqa: BLE001 - an echoed argument python-osc cannot encode
        count("send_errors")


@dataclass(frozen=True)
class Reply:
    """A reply sent from the sender thread (for answers that come after the datagram was handled)."""

    client: Any
    address: str
    args: list[Any]


class Broadcaster:
    """The sender thread of an OSC server whose replies leave from `reply_socket`: tells `subscribers`
    (live ones) and `feedback` targets what the engine of `surface` does. `count(*kinds)` is the server's
    counter. `put(item)` queues an Event, a Reply, or an (ip, port) owed the full state."""

    def __init__(self, surface: StreamingSession, subscribers: Subscribers, feedback: list[tuple[str, int]],
                 reply_socket: socket.socket, status_interval: float, count: Callable[..., None]) -> None:
        self._surface, self._subscribers, self.feedback = surface, subscribers, feedback
        self._reply_socket, self.status_interval, self._count = reply_socket, status_interval, count
        self.socket = socket.socket(reply_socket.family, socket.SOCK_DGRAM)
        self.socket.bind((reply_socket.getsockname()[0], 0))
        self._outbox = queue.SimpleQueue[Any]()
        self._echoed: dict[str, Any] = {}  # the value last echoed per control (the sender thread's own)
        self._thread: threading.Thread | None = None
        self._running = False

    def start(self) -> None:
        self._running = True
        self._surface.listeners.add(self._on_event)
        self._thread = threading.Thread(target=self._run, name="musicsteer-osc-out", daemon=True)
        self._thread.start()
        for target in self.feedback:  # surfaces start in sync
            self.put(target)

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._surface.listeners.remove(self._on_event)
            self._outbox.put(_STOP)
            if self._thread is not None:
                self._thread.join(timeout=5)

    def close(self) -> None:
        self.socket.close()

    def put(self, item: Any) -> None:
        self._outbox.put(item)

    def status_args(self) -> list[Any]:
        return osc_args.status(self._surface.status())

    def _on_event(self, event: Event) -> None:
        if self._running and (self._subscribers or self.feedback):  # only an enqueue: this runs between tokens
            self._outbox.put(event)

    def _send(self, clients: Any, address: str, *args: Any) -> None:
        send(self.socket, clients, address, args, self._count)

    def _echo(self, clients: Any, values: dict[str, Any], again: bool = False) -> None:
        """Each value on its control's own address (/musicsteer/alpha f, /musicsteer/mix s f …), where a
        surface's widget for that address shows it; one equal to the one last echoed only when `again`
        (a new subscriber's start)."""
        for param, value in values.items():
            args = osc_args.values(value)
            if args and (again or self._echoed.get(param, _STOP) != value):  # (no args: no mix, the file's layers)
                self._echoed[param] = value
                self._send(clients, f"{PREFIX}/{LIVE[param].osc[0]}", *args)

    def _sync(self, client: Any) -> None:
        """The full state to one subscriber (a status, then every value), so its widgets start in sync."""
        self._send(client, f"{PREFIX}/status", *self.status_args())
        self._echo(client, current_values(self._surface.control.values), again=True)

    def _run(self) -> None:
        due = time.monotonic() + self.status_interval
        while True:
            item = None
            with contextlib.suppress(queue.Empty):
                item = self._outbox.get(timeout=max(0.0, due - time.monotonic()))
            if item is _STOP:
                return
            try:
                due = self._tell(item, due)
            except Exception:  # noqa: BLE001 - one bad status must not end subscriber traffic
                self._count("internal")

    def _tell(self, item: Any, due: float) -> float:
        """Send what one queued item asks for, and the status when it is `due`; returns the next due time."""
        subscribers = [*self.feedback, *(s for s in self._subscribers.live() if s not in self.feedback)]
        if isinstance(item, MeterReading):  # /musicsteer/meter label score ...
            self._send(subscribers, f"{PREFIX}/meter", *(x for pair in item.scores.items() for x in pair))
        elif isinstance(item, tuple):  # a new subscriber's address: the state now, to start in sync
            self._sync(item)
        elif isinstance(item, Reply):  # a deferred reply: from the server's socket
            send(self._reply_socket, item.client, item.address, item.args, self._count)
        elif isinstance(item, Notice):
            self._send(subscribers, f"{PREFIX}/{item.level}", one_line(item.text, 300))
        for change in item.changes if isinstance(item, Applied) else ():
            self._send(subscribers, f"{PREFIX}/changed", change.param, *osc_args.values(change.value),
                       *([float(change.seconds)] if change.seconds else []))
        if isinstance(item, Applied):
            self._echo(subscribers, applied_values(item))
        if time.monotonic() >= due:
            due = max(due + self.status_interval, time.monotonic())  # no burst after a stall
            self._send(subscribers, f"{PREFIX}/status", *(self.status_args() if subscribers else ()))
            for owed in self._subscribers.owed():  # subscribers whose state the budget put off
                self._sync(owed)
        return due


__all__ = ["Broadcaster", "Reply", "send"]
