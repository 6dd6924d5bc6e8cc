"""OSCQuery's HTTP server (controllers/oscquery.py), held to a bound: what any peer can make it hold.

python-oscquery's HTTP server (a ThreadingHTTPServer: a thread per connection, one request each, HTTP/1.0)
answers the address space; this wraps it so that no peer can hold it. What a request may hold:

- A request must arrive whole (its request line and every header) within HEADER_SECONDS of its connection,
  and be answered within REQUEST_SECONDS; past either its connection is cut. A client trickling its
  headers a byte at a time (slowloris) never trips the handler's between-reads `timeout`: this deadline,
  checked by the serving thread each POLL_SECONDS, is what ends it.
- MAX_CLIENTS connections are served at once, MAX_PER_HOST of them from one host. A new connection past
  either takes the place of the oldest connection whose request has not arrived whole (from its own host
  when that host is at its cap, else from the host holding the most): a surface's request, which arrives
  in one packet, always gets in, and 16 tricklers no longer lock it out (they did: a trickler that had
  sent its request line counted as busy and could not be displaced). With no such connection it waits
  ROOM_SECONDS for one to end, then is closed.
- accept() failing for want of descriptors (EMFILE…) sleeps the serving thread ACCEPT_BACKOFF seconds
  (socketserver otherwise retries at once: a silent spin).

Read-only: GET only; HEAD and every other method are refused, so the library's file-serving base class
never reads the disk. No line is logged per request (a surface polls every second; `?BOGUS` is answered
400 to the client). `owner` gives the address space, `refresh()` (VALUE read now) and `errors` (counted).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pythonoscquery.osc_query_service import OSCQueryHTTPHandler, OSCQueryHTTPServer
from pythonoscquery.shared.osc_address_space import OSCAddressSpace
from pythonoscquery.shared.osc_host_info import OSCHostInfo

from musicsteer.engine.errors import one_line

MAX_CLIENTS = 16  # connections served at once (a thread each)
MAX_PER_HOST = MAX_CLIENTS // 2  # of them from one host: one host cannot take every place
HEADER_SECONDS = 3.0  # the longest a request may take to arrive whole (request line and headers)
REQUEST_SECONDS = 10.0  # the longest a connection may last (its one request arrived and answered)
POLL_SECONDS = 0.1  # how often the serving thread looks for connections past their deadline
ROOM_SECONDS = 1.0  # how long a new connection waits for a place to free
ACCEPT_BACKOFF = 0.5  # s without accepting after accept() ran out of descriptors (it would spin, not block)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Owner(Protocol):
    """What the server serves: the service's address space and host info, refreshed per request."""

    errors: int  # requests that failed or were cut (counted; never logged)
    space: OSCAddressSpace
    host_info: OSCHostInfo

    def refresh(self) -> None: ...


@dataclass
class _Held:
    """One connection held: from which host, since when (monotonic), whether its request arrived whole."""

    host: str
    since: float
    arrived: bool = False


class _Handler(OSCQueryHTTPHandler):
    server: HTTPServer
    timeout = 5  # seconds a stalled client may wait between two reads

    def parse_request(self) -> bool:  # reads the headers: once it returns, the request arrived whole
        whole = super().parse_request()
        self.server.arrived(self.connection)
        return whole

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        owner = self.server.owner
        try:
            owner.refresh()
        except Exception as exc:  # noqa: BLE001 - a failing values() answers 500, never kills the server
            self._respond(500, one_line(f"cannot read the current values: {exc}", 200))
            return
        try:  # (the library writes nothing until its JSON is made: a value JSON cannot hold fails first)
            super().do_GET()
        except Exception as exc:  # noqa: BLE001
            owner.errors += 1
            self._respond(500, one_line(f"internal error ({type(exc).__name__})", 200))

    def do_HEAD(self) -> None:  # SimpleHTTPRequestHandler's HEAD would look up files in the working directory
        self.send_error(405, "read-only OSCQuery server: GET only")

    def _respond(self, code: int, data: str | None = None) -> None:  # JSON with a length; a 204 has no body
        body = (data or "").encode() if code != 204 else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if code == 200 else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # a surface polling every second must not fill stderr
        pass


class HTTPServer(OSCQueryHTTPServer):
    """Binds `address` at once (OSError as socketserver raises it); `serve_forever(POLL_SECONDS)` serves."""

    daemon_threads = False  # server_close() joins every request thread: nothing is left running
    block_on_close = True

    def __init__(self, owner: Owner, address: tuple[str, int]) -> None:
        self.owner, self.address_family = owner, socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._open: dict[socket.socket, _Held] = {}  # connections served now, oldest first
        self._serving = 0  # request threads running (cut ones included, until they end)
        self._room = threading.Condition()  # guards both; notified when a request thread ends
        super().__init__(owner.space, owner.host_info, address, _Handler, True)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:  # (socketserver ignores it, and select() says "readable" again at once: a spin)
            self.owner.errors += 1
            if exc.errno in _OUT_OF_RESOURCES:
                time.sleep(ACCEPT_BACKOFF)  # this is the serving thread's own wait: nothing else stalls
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on a thread of its own, making room if need be (see the module's doc); else closed."""
        host = str(client_address[0])
        with self._room:
            mine = [c for c, held in self._open.items() if held.host == host]
            full = len(mine) >= MAX_PER_HOST
            if full:
                victim = self._waiting(mine)
            elif self._serving >= MAX_CLIENTS:  # the host holding the most gives way first
                victim = self._waiting(self._crowd()) or self._waiting(list(self._open))
            else:
                victim = None
            if victim is not None:
                self.owner.errors += 1
                self._cut(victim)
            if (full and victim is None) or not self._room.wait_for(lambda: self._serving < MAX_CLIENTS,
                                                                      timeout=ROOM_SECONDS):
                self.owner.errors += 1  # every place busy answering: this one is closed
                self.shutdown_request(request)
                return
            self._serving += 1
            self._open[request] = _Held(host, time.monotonic())
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._ended(request)
            raise

    def _waiting(self, connections: list[socket.socket]) -> socket.socket | None:
        """The oldest of `connections` whose request has not arrived whole (the lock held)."""
        return next((c for c in connections if not self._open[c].arrived), None)

    def _crowd(self) -> list[socket.socket]:
        """The connections of the host holding the most now, oldest first (the lock held)."""
        hosts: dict[str, int] = {}
        for held in self._open.values():
            hosts[held.host] = hosts.get(held.host, 0) + 1
        top = max(hosts, key=hosts.__getitem__, default=None)
        return [c for c, held in self._open.items() if held.host == top]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._ended(request)

    def _ended(self, request: socket.socket) -> None:
        with self._room:
            self._open.pop(request, None)
            self._serving -= 1
            self._room.notify_all()

    def arrived(self, connection: socket.socket) -> None:
        """Its request line and headers are in: it is being answered and keeps its place until answered."""
        with self._room:
            if connection in self._open:
                self._open[connection].arrived = True

    def service_actions(self) -> None:
        """The serving thread, each POLL_SECONDS: cut the connections past their deadline."""
        now = time.monotonic()
        with self._room:
            for connection, held in list(self._open.items()):
                if now - held.since > (REQUEST_SECONDS if held.arrived else HEADER_SECONDS):
                    self.owner.errors += 1
                    self._cut(connection)

    def _cut(self, connection: socket.socket) -> None:
        """End a connection now (the lock held): its request thread returns, and frees its place as it ends."""
        self._open.pop(connection)  # (not picked twice; its thread counts in _serving until it ends)
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        """End every connection now (the service stops: nothing to wait for)."""
        with self._room:
            for connection in list(self._open):
                self._cut(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:  # no traceback per broken client
        self.owner.errors += 1


__all__ = ["HEADER_SECONDS", "MAX_CLIENTS", "MAX_PER_HOST", "REQUEST_SECONDS", "HTTPServer", "Owner"]
