"""Issue 28 (2), the page's port path by path: what a peer can make it hold is bounded and expires.

A real streaming session (tiny model, null device) serves the page; peers are real TCP sockets and real
WebSockets from 127.0.0.1 (and, as other hosts, from 127.0.0.2 and 127.0.0.3: Linux routes 127/8 to the
loopback interface): a connection that never sends, one that trickles its headers, more connections than
the port holds, more pages than it serves, and the performer's own page in a real headless Chromium.
(The descriptor-limit run, 2,000 idle connections against a
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

from musicsteer.controllers.web import DISPLACED, MAX_PAGES, MAX_PAGES_PER_HOST, WebSurface
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


async def _page(url: str, host: str = "127.0.0.1") -> websockets.ClientConnection:
    """A page's WebSocket from `host` (any of 127/8: another host to the server), past its hello."""
    page = await websockets.connect(url, open_timeout=10, local_addr=(host, 0))
    assert json.loads(await asyncio.wait_for(page.recv(), 10))["type"] == "hello"
    return page


async def _displaced(page: websockets.ClientConnection) -> str:
    """The reason a page was closed to make room (its close code must be DISPLACED), reading what comes first."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(10):  # (TimeoutError: not displaced, a failure)
            while True:
                await page.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == DISPLACED, closed.value
    return closed.value.rcvd.reason


def test_one_host_holds_at_most_its_share_of_pages_and_a_fresh_page_always_opens(web: WebSurface) -> None:
    """Issue 28's second round: 16 pages from one client filled every place, and the performer's page was
    refused (1013) for as long as they stayed. Now one host holds MAX_PAGES_PER_HOST; a page past it, or past
    MAX_PAGES, takes the place of the page heard from longest ago (of its own host, else of the host holding
    the most; of several holding as many, the page heard from longest ago), which is closed with DISPLACED and
    a reason; a page gone frees its place."""
    url = f"ws://127.0.0.1:{web.address[1]}/ws"

    async def run() -> None:
        before = web.counters["pages_displaced"]
        hog = [await _page(url, "127.0.0.2") for _ in range(MAX_PAGES)]  # one client opens every place
        reasons = [await _displaced(page) for page in hog[:MAX_PAGES - MAX_PAGES_PER_HOST]]  # the oldest go
        assert all("newer page took its place" in r and "reload" in r for r in reasons), reasons
        others = [await _page(url, "127.0.0.3") for _ in range(MAX_PAGES - MAX_PAGES_PER_HOST)]  # now all full
        await hog[-1].send(json.dumps({"type": "set", "param": "alpha", "value": 0.2}))  # heard from lately
        await asyncio.sleep(0.3)
        performer = await _page(url)  # a fresh page from a third host: in, at the hog's expense
        await _displaced(hog[MAX_PAGES - MAX_PAGES_PER_HOST])  # the hog's page heard from longest ago
        again = await _page(url)  # the performer reloading: in, at the expense of the host holding the most now
        await _displaced(others[0])
        for page in (hog[-1], *others[1:], performer, again):  # nobody else lost a place
            assert json.loads(await asyncio.wait_for(page.recv(), 10))["type"] in ("status", "level", "values")
        assert web.counters["pages_displaced"] - before == MAX_PAGES - MAX_PAGES_PER_HOST + 2
        for page in (*hog, *others, performer, again):
            page.transport.abort()  # gone without a goodbye (a phone whose browser was killed)
        deadline = time.monotonic() + 10
        while web._pages:  # the pages that went away free their places
            assert time.monotonic() < deadline, f"{len(web._pages)} pages gone still hold their places"
            await asyncio.sleep(0.2)

    asyncio.run(run())


def test_the_performers_page_opens_past_a_hog_and_a_displaced_page_stays_closed(web: WebSurface, tmp_path) -> None:
    """In a real headless Chromium: the performer's page connects while another client holds every place it
    may; a page displaced says why and does not reconnect (reconnecting would displace the newer one: two
    tabs would take each other's place for ever)."""
    from conftest import chromium
    from selenium.webdriver.common.by import By

    url = f"ws://127.0.0.1:{web.address[1]}/ws"
    driver = chromium(tmp_path / "profile")
    loop = asyncio.new_event_loop()
    try:
        hog = [loop.run_until_complete(_page(url, "127.0.0.2")) for _ in range(MAX_PAGES)]
        driver.get(f"http://127.0.0.1:{web.address[1]}/")
        chip = lambda: driver.find_element(By.ID, "connection").text  # noqa: E731
        until(lambda: chip() == "connected", what="the performer's page to connect")
        newer = [loop.run_until_complete(_page(url)) for _ in range(MAX_PAGES_PER_HOST)]  # its own host's
        until(lambda: chip().startswith("closed: a newer page took its place"), what="the page to say why")
        time.sleep(3)  # the page's retry would have come within 0.5 s
        assert chip().startswith("closed:") and sum(p.host == "127.0.0.1" for p in web._pages) == MAX_PAGES_PER_HOST
        for page in (*hog, *newer):
            page.transport.abort()
    finally:
        driver.quit()
        loop.close()
