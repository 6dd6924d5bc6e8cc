"""Issue 28 (2), the page's port path by path: what a peer can make it hold is bounded and expires.

A real streaming session (tiny model, null device) serves the page; peers are real TCP sockets and real
WebSockets from 127.0.0.1: a connection that never sends, one that trickles its headers, more connections
than the port holds, more pages than it serves. (The descriptor-limit run, 2,000 idle connections against a
`musicsteer play` under RLIMIT_NOFILE 1,024 while a take records, is tests/test_peers_web.py.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request

import pytest
import websockets
from conftest import random_vectors
from test_osc import until

from musicsteer.controllers.web import MAX_PAGES, WebSurface
from musicsteer.controllers.web_connections import MAX_CONNECTIONS, REQUEST_SECONDS
from musicsteer.engine.control import Controls
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions


@pytest.fixture(scope="module")
def web(tiny, tmp_path_factory):
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2), random_vectors(tiny, best_layer=1))
    session = StreamingSession(gen, StreamOptions(output_device="null", record_dir=tmp_path_factory.mktemp("takes")))
    surface = WebSurface(session, "127.0.0.1", 0)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    surface.start()
    until(lambda: session.step > 10, what="the session to start generating")
    yield surface
    surface.stop()
    session.stop()
    runner.join(timeout=30)
    assert session.error is None


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes `sock` within `timeout` s (EOF or a reset), reading what it sends meanwhile."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return response.status


def test_a_connection_that_sends_nothing_or_trickles_its_headers_is_closed(web: WebSurface) -> None:
    before = web.counters["idle_closed"]
    silent = socket.create_connection(web.address)
    trickler = socket.create_connection(web.address)
    stop = threading.Event()

    def trickle() -> None:  # slowloris: a header byte every 0.5 s, never a whole request
        for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-" + b"a" * 1000:
            if stop.wait(0.5):
                return
            try:
                trickler.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert _closed_by_server(silent, 2 * REQUEST_SECONDS + 2), "a connection that never sent stayed open"
        assert _closed_by_server(trickler, 2 * REQUEST_SECONDS + 2), "a trickling connection stayed open"
    finally:
        stop.set()
        thread.join()
        silent.close()
        trickler.close()
    assert web.counters["idle_closed"] - before >= 2
    assert _get(web.address[1]) == 200


def test_connections_past_the_cap_displace_idle_ones_and_an_open_page_keeps_its_news(web: WebSurface) -> None:
    async def run() -> int:
        async with websockets.connect(f"ws://127.0.0.1:{web.address[1]}/ws", open_timeout=10) as page:
            assert json.loads(await page.recv())["type"] == "hello"
            held = [socket.create_connection(web.address) for _ in range(MAX_CONNECTIONS + 40)]
            try:
                await asyncio.sleep(0.5)
                status = await asyncio.to_thread(_get, web.address[1])  # a fresh request gets in
                news = 0
                while news < 3:  # the page still hears the session
                    if json.loads(await asyncio.wait_for(page.recv(), 10))["type"] == "status":
                        news += 1
                closed = sum(await asyncio.to_thread(lambda: [_closed_by_server(sock, 0.05) for sock in held]))
            finally:
                for sock in held:
                    sock.close()
            assert closed >= 40  # displaced (the oldest idle first) or refused at the door
            return status

    before = web.counters["evicted"] + web.counters["refused_connection"]
    assert asyncio.run(run()) == 200
    assert web.counters["evicted"] + web.counters["refused_connection"] - before >= 40


def test_pages_are_bounded_and_a_page_gone_frees_its_place(web: WebSurface) -> None:
    url = f"ws://127.0.0.1:{web.address[1]}/ws"

    async def run() -> None:
        pages = [await websockets.connect(url, open_timeout=10) for _ in range(MAX_PAGES)]
        for page in pages:
            assert json.loads(await page.recv())["type"] == "hello"
        with pytest.raises(websockets.InvalidStatus):  # one past the bound: refused, nothing held
            await websockets.connect(url, open_timeout=10)
        for page in pages:
            page.transport.abort()  # gone without a goodbye (a phone whose browser was killed)
        deadline = time.monotonic() + 10
        while True:
            try:
                async with websockets.connect(url, open_timeout=10) as page:
                    assert json.loads(await page.recv())["type"] == "hello"
                    return
            except websockets.InvalidStatus:
                assert time.monotonic() < deadline, "the pages that went away still held their places"
                await asyncio.sleep(0.2)

    asyncio.run(run())
