"""Issue 28 (2), live prompts: a sender posting prompts faster than the encoder takes them holds one place,
and the performer's prompt is always taken (a flood once held all 8 places: the performer was refused `busy`).

A real streaming session (tiny model, null device) with its OSC server over real UDP; flooders are sockets
bound to 127.0.0.2 and up (other hosts to the server: Linux routes 127/8 to the loopback interface), and a
page is a real WebSocket. The tiny model's text encoder takes a millisecond, so no flood outruns it here:
the prompt thread is held at a gate in front of its encoder (the one stand-in in this file), which is what
a slow tokenizer and text encoder on a small CPU (6 s for a long prompt on musicgen-small) look like to the
queue. Everything else is the real path: OSC server, ControlState.submit, PromptEncoder, generation thread.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import websockets
from test_osc import Client, Live, until

from musicsteer.controllers.osc import OscServer
from musicsteer.controllers.web import WebSurface
from musicsteer.engine.control import Controls
from musicsteer.engine.generator import Generator
from musicsteer.engine.prompts import PENDING
from musicsteer.engine.session import StreamingSession, StreamOptions

HOSTS = [f"127.0.0.{i}" for i in range(2, PENDING + 4)]  # more flooding hosts than there are places
EACH = 20  # prompts each host sends


@pytest.fixture
def gated(tiny, tmp_path):
    """A running session with OSC and the page, its prompt thread held at a gate until `gate.set()`."""
    gen = Generator(tiny, Controls(prompt="rock"))
    session = StreamingSession(gen, StreamOptions(output_device="null", record_dir=tmp_path))
    server, web = OscServer(session, port=0), WebSurface(session, "127.0.0.1", 0)
    live = Live(session, server)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    server.start()
    web.start()
    until(lambda: session.step > 5, what="the session to start generating")
    gate, encode = threading.Event(), gen.prompts._encode
    gen.prompts._encode = lambda prompt: gate.wait() and encode(prompt)  # the slow encoder's stand-in
    yield live, web, gate
    gate.set()
    web.stop()
    server.stop()
    session.stop()
    runner.join(timeout=30)
    assert session.error is None


def _prompts(live: Live) -> list[str]:
    return [change.value for _, change, _ in list(live.seen) if change.param == "prompt"]


def test_a_prompt_flood_from_many_hosts_never_refuses_the_performers_prompt(gated) -> None:
    live, _, gate = gated
    floods = [Client(live.server.address, bind=host) for host in HOSTS]
    performer = Client(live.server.address)
    try:
        for host, flood in zip(HOSTS, floods, strict=True):
            for i in range(EACH):
                flood.send("/musicsteer/prompt", f"flood from {host} number {i}")
        until(lambda: live.server.counters["applied"] >= len(HOSTS) * EACH, what="every flood prompt submitted")
        assert not any(flood.replies("/musicsteer/error") for flood in floods)  # a prompt is never refused
        performer.send("/musicsteer/prompt", "the performer's jazz")
        performer.send("/musicsteer/ping", 1)
        performer.wait("/musicsteer/pong")  # replies come in order: an error would have come first
        assert performer.replies("/musicsteer/error") == []
        gate.set()
        until(lambda: _prompts(live) and _prompts(live)[-1] == "the performer's jazz", what="the performer's prompt")
        sent = len(HOSTS) * EACH + 1
        applied = _prompts(live)
        # One prompt was on the encoder when the gate closed; PENDING waited when it opened, one per host, the
        # newest of each: every other one gave way unapplied, and was counted.
        assert len(applied) == PENDING + 1, applied
        assert live.session.control.counts.get("superseded") == sent - len(applied)
        assert applied[1:-1] == [f"flood from {host} number {EACH - 1}" for host in HOSTS[-(PENDING - 1):]]
    finally:
        for client in (*floods, performer):
            client.close()


def test_a_page_flooding_prompts_holds_one_place(gated) -> None:
    """The page's path: a page's prompts (a host's, whatever its number of pages) hold one waiting place."""
    live, web, gate = gated
    url = f"ws://127.0.0.1:{web.address[1]}/ws"

    async def flood() -> None:
        async with websockets.connect(url, open_timeout=10, local_addr=("127.0.0.2", 0)) as page:
            for i in range(3 * PENDING):
                await page.send(json.dumps({"type": "set", "param": "prompt", "value": f"page prompt {i}"}))

    asyncio.run(flood())
    until(lambda: web.counters["messages"] >= 3 * PENDING, what="the flood handled")
    performer = Client(live.server.address)
    try:
        performer.send("/musicsteer/prompt", "the performer's jazz")
        performer.send("/musicsteer/ping", 1)
        performer.wait("/musicsteer/pong")
        assert performer.replies("/musicsteer/error") == []
        gate.set()
        until(lambda: _prompts(live) and _prompts(live)[-1] == "the performer's jazz", what="the performer's prompt")
        applied = _prompts(live)  # the one on the encoder when the gate closed, the page's newest, the performer's
        assert applied[-2:] == [f"page prompt {3 * PENDING - 1}", "the performer's jazz"] and len(applied) <= 3
        assert live.session.control.counts.get("superseded") == 3 * PENDING + 1 - len(applied)
    finally:
        performer.close()
