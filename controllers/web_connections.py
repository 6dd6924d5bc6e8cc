"""The page's TCP port held to a bound: what any host that reaches it can make the session hold.

uvicorn accepts whatever reaches its socket and keeps a connection that never sends a byte for ever
(its keep-alive timeout starts only after a response), so peers on the LAN could hold every descriptor
of the process: at the usual 1,024, `record/start` failed with "Too many open files", and asyncio's
accept loop (CPython 3.11) then scheduled a retry per failed accept, a hundred per tick, each logging
a traceback. So the accept loop is ours (`Doorman`), and uvicorn serves the connections it hands on:

- MAX_CONNECTIONS are open at most, open pages (WebSockets) included. A new one past it takes the
  place of the oldest connection that holds no request (idle), or when none is idle of the oldest
  connection that is not an open page, whatever it is doing: the performer reloading always gets in
  (web.MAX_PAGES, far below MAX_CONNECTIONS, bounds the pages, so there always is one).
- A connection must make progress to keep its place. One that holds no request for REQUEST_SECONDS
  (one that never sends, or trickles its headers a byte at a time) is closed, and so is one whose
  response has waited REQUEST_SECONDS for the peer to read (writes paused: a client that pipelines
  requests and never reads its answers). An open page is not: the WebSocket pings (`ws_ping_interval`,
  `ws_ping_timeout`) end one whose peer went away, and web.MAX_PAGES bounds them. The kernel's send
  buffer is SEND_BUFFER (not autotuned up to 4 MiB a connection), so a response a peer does not read
  stalls soon, and the server does not make MiBs of answers for it first.
- accept() failing for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) stops accepting
  for ACCEPT_BACKOFF seconds; counted (`accept_failed`), never logged per failure.

Everything here runs on the web thread's event loop. Counters (through `count`): refused_connection,
evicted, idle_closed, stalled_closed, accept_failed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_CONNECTIONS = 64  # open at once (pages included): far below any descriptor limit, so the session keeps its own
REQUEST_SECONDS = 5.0  # the longest a connection may hold no request, or wait for its peer to read a response
SEND_BUFFER = 128 << 10  # bytes of a connection's kernel send buffer (Linux doubles it): no autotuning to 4 MiB,
# so a peer that reads nothing stalls its response after ~300 kB (and is closed), not after the server made MiBs
ACCEPT_BACKOFF = 0.5  # s without accepting after accept() ran out of descriptors
ACCEPT_BATCH = 32  # accepts per readiness event (then the loop serves the connections it has)
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Doorman:
    """Accepts on `sock` (listening) for `server` (a uvicorn.Server run with `sockets=[]`, so that it binds
    nothing itself); call `open()` from the server's loop once its lifespan started, `close()` to stop."""

    def __init__(self, sock: socket.socket, server: uvicorn.Server, count: Callable[[str], None],
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._sock, self._server, self._count = sock, server, count
        self.max_connections = max_connections
        self.held: dict[_Connection, None] = {}  # HTTP connections (not yet pages), oldest first
        self._pending = 0  # accepted, not yet handed to a protocol
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._loop is not None and not self._paused:
            self._loop.remove_reader(self._sock.fileno())
        self._paused = True  # a pending resume does nothing now
        self._loop = None

    def _accept(self) -> None:
        loop = self._loop
        if loop is None or self._server.should_exit:  # stopping: accept nothing more
            self.close()
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._count("accept_failed")
                if exc.errno in OUT_OF_RESOURCES:  # the descriptor stays readable: stop asking for a while
                    loop.remove_reader(self._sock.fileno())
                    self._paused = True
                    loop.call_later(ACCEPT_BACKOFF, self._resume)
                return
            if not self._room():
                self._count("refused_connection")
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self._pending += 1
            task = loop.create_task(loop.connect_accepted_socket(self._protocol, conn))
            task.add_done_callback(self._handed)

    def _handed(self, task: asyncio.Task) -> None:
        self._pending -= 1
        if not task.cancelled() and task.exception() is not None:
            self._count("accept_failed")

    def _resume(self) -> None:
        if self._loop is not None and self._paused:
            self._paused = False
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _room(self) -> bool:
        """Whether one more connection may open, closing the oldest idle one to make room if need be, else
        the oldest that is not a page (busy: its request or response may be stuck behind a peer that never reads)."""
        open_ = sum(1 for c in self._server.server_state.connections if not _closing(c))
        if open_ + self._pending < self.max_connections:
            return True
        victim = next((c for c in self.held if c.idle), None) or next(iter(self.held), None)
        if victim is None:  # only pages and connections not yet handed on hold places
            return False
        self._count("evicted")
        victim.drop()
        return True

    def _protocol(self) -> _Connection:
        return _Connection(config=self._server.config, server_state=self._server.server_state,
                           app_state=self._server.lifespan.state, _loop=self._loop, doorman=self)


def _closing(protocol: Any) -> bool:
    transport = getattr(protocol, "transport", None)
    return transport is None or transport.is_closing()


class _Connection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closed when it holds no request for REQUEST_SECONDS, or when its writes
    have been paused (the peer reads nothing) for REQUEST_SECONDS."""

    def __init__(self, *args: Any, doorman: Doorman, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._doorman = doorman
        self._seen: Any = None  # the request cycle at the last check (None: no request yet)
        self._timer: asyncio.TimerHandle | None = None
        self._paused_at: float | None = None  # loop time writes were paused (the transport's buffer full), or None

    @property
    def idle(self) -> bool:
        """No request in progress (none yet, or the last one answered), and not being closed."""
        return not _closing(self) and (self.cycle is None or self.cycle.response_complete)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._doorman.held[self] = None
        self._timer = self.loop.call_later(REQUEST_SECONDS, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._paused_at is None:
            self._paused_at = self.loop.time()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused_at = None

    def handle_websocket_upgrade(self, event: Any) -> None:  # a page: the WebSocket protocol owns it now
        self._forget()
        super().handle_websocket_upgrade(event)

    def drop(self) -> None:
        self._forget()
        self.transport.abort()

    def _forget(self) -> None:
        self._doorman.held.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        """Every REQUEST_SECONDS: closed if no request began since the last check and none is in progress, or
        if its writes have been paused for REQUEST_SECONDS (its response stuck: the peer reads nothing)."""
        if self._paused_at is not None and self.loop.time() - self._paused_at >= REQUEST_SECONDS:
            self._doorman._count("stalled_closed")
            self.drop()
            return
        if self.idle and self.cycle is self._seen:
            self._doorman._count("idle_closed")
            self.drop()
            return
        self._seen = self.cycle
        self._timer = self.loop.call_later(REQUEST_SECONDS, self._check)


__all__ = ["MAX_CONNECTIONS", "REQUEST_SECONDS", "Doorman"]
