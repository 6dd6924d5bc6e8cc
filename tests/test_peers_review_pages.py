"""Issue 28 (2), review: connections that pipeline requests and never read their answers hold no place.

A real streaming session (tiny model, null device) serves the page; the peers are real TCP sockets from
127.0.0.1 that send thousands of pipelined `GET /` with a 1 KiB receive buffer and never read, so each one's
response stays stuck behind flow control (never "idle"). Before the fix, MAX_CONNECTIONS of them locked the
page out for as long as they stayed: every new connection, the WebSocket handshake too, was reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import websockets
from test_osc import until
from test_peers_pages import _closed_by_server, _get, web  # noqa: F401 - the module's session fixture

from musicsteer.controllers.web import WebSurface
from musicsteer.controllers.web_connections import MAX_CONNECTIONS

PIPELINED = 3000  # requests per connection: their answers (the page, ~kB each) fill every buffer on the way
STALL_WAIT = 60.0  # s: for the server to fill each one's buffers (70 of them, on a shared CPU), then REQUEST_SECONDS


def _non_reader(address: tuple[str, int]) -> socket.socket:
    """A connection that pipelines PIPELINED requests and never reads (a 1 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(address)
    sock.setblocking(False)
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{address[1]}\r\n\r\n".encode() * PIPELINED
    with contextlib.suppress(OSError):  # refused or displaced already: it holds nothing
        sock.send(request)
    return sock


def _busy(surface: WebSurface) -> int:
    """How many held connections are not idle (a request in progress: being answered, or stuck)."""
    return sum(1 for c in list(surface._doorman.held) if not c.idle)


def test_non_reading_pipeliners_neither_lock_the_page_out_nor_stay(web: WebSurface) -> None:  # noqa: F811
    before = web.counters["evicted"] + web.counters["stalled_closed"]
    held = [_non_reader(web.address) for _ in range(MAX_CONNECTIONS)]

    def full() -> bool:  # every place held by a pipeliner being answered (or stuck); else one more comes
        if len(web._doorman.held) >= MAX_CONNECTIONS and _busy(web) == MAX_CONNECTIONS:
            return True
        held.append(_non_reader(web.address))
        time.sleep(0.05)
        return False

    try:
        until(full, timeout=30, what="the pipeliners to fill the port")

        async def page_and_reload() -> tuple[str, int]:
            async with websockets.connect(f"ws://127.0.0.1:{web.address[1]}/ws", open_timeout=10) as page:
                hello = json.loads(await page.recv())["type"]
            return hello, await asyncio.to_thread(_get, web.address[1])

        assert asyncio.run(page_and_reload()) == ("hello", 200)  # the performer reloading gets in at once
        # and none of them keeps its place: a response that cannot be written for REQUEST_SECONDS ends it
        closed = [_closed_by_server(sock, STALL_WAIT) for sock in held]
        assert all(closed), f"{closed.count(False)} non-reading connections still open"
    finally:
        for sock in held:
            sock.close()
    assert web.counters["evicted"] + web.counters["stalled_closed"] - before >= MAX_CONNECTIONS
    assert web.counters["stalled_closed"] > 0
    assert _get(web.address[1]) == 200
