"""Issue 28 (2), OSCQuery: connections that trickle their HTTP headers a byte at a time (slowloris) hold no
place for long, and never lock a surface's request out.

Real TCP over loopback against a real OscQueryService. A trickler sends its request line at once (so the old
server counted it busy: only a connection with no request line could be displaced), then a header byte every
0.3 s, never the blank line that ends the headers. Peers from another host are sockets bound to 127.0.0.2
(Linux routes all of 127/8 to the loopback interface).
"""

from __future__ import annotations

import socket
import threading
import time

from test_oscquery import OSC, get

from musicsteer.controllers.oscquery import OscQueryService
from musicsteer.controllers.oscquery_http import HEADER_SECONDS, MAX_CLIENTS, MAX_PER_HOST


class Tricklers:
    """`count` connections from `host`, each trickling its headers on a thread of the test's own; `cut`
    counts the ones the server has closed so far."""

    def __init__(self, service: OscQueryService, count: int, host: str = "127.0.0.1") -> None:
        self._stop = threading.Event()
        self.socks = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sock.connect(service.address)
            sock.sendall(b"GET / HTTP/1.1\r\n")  # the request line: what made the old server count it busy
            self.socks.append(sock)
        self.closed = [False] * count
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        header = b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        for byte in header:
            if self._stop.wait(0.3):
                return
            for i, sock in enumerate(self.socks):
                if not self.closed[i]:
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        self.closed[i] = True

    def cut(self) -> int:
        """How many the server closed (EOF or reset on a read that does not wait)."""
        for i, sock in enumerate(self.socks):
            if not self.closed[i]:
                sock.setblocking(False)
                try:
                    self.closed[i] = sock.recv(4096) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed[i] = True
        return sum(self.closed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def test_header_tricklers_never_lock_a_surface_out() -> None:
    with OscQueryService(OSC, "127.0.0.1", 0, lambda: {"alpha": 0.5}, advertise=False) as service:
        crowd = Tricklers(service, MAX_CLIENTS + 4)  # every place, and more, from the surface's own host
        try:
            time.sleep(0.5)
            began = time.monotonic()
            status, body = get(service, "/musicsteer/alpha?VALUE")  # the surface's poll
            assert (status, body) == (200, {"VALUE": [0.5]})
            assert time.monotonic() - began < 2.0, "the request waited for a place"
        finally:
            crowd.close()


def test_one_host_holds_at_most_its_share_and_a_request_must_arrive_in_time() -> None:
    with OscQueryService(OSC, "127.0.0.1", 0, lambda: {"alpha": 0.5}, advertise=False) as service:
        other = Tricklers(service, MAX_CLIENTS + 4, host="127.0.0.2")
        try:
            time.sleep(0.5)
            assert other.cut() >= MAX_CLIENTS + 4 - MAX_PER_HOST  # the host's oldest made room for its newest
            assert get(service, "/musicsteer/alpha?VALUE")[0] == 200  # another host: a place was free
            deadline = time.monotonic() + HEADER_SECONDS + 2
            while other.cut() < len(other.socks) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert other.cut() == len(other.socks), "a request still arriving held its place past the deadline"
        finally:
            other.close()
        for _ in range(3):
            assert get(service, "/musicsteer/alpha?VALUE")[0] == 200
