"""Issue 28 (2): what peers can make a session hold is bounded and expires; the session's own needs come first.

A real `musicsteer play --model tiny` in a subprocess, limited to the usual 1,024 descriptors (RLIMIT_NOFILE,
soft and hard), plays through a JACK dummy server (a real clocked stream: underruns are real) while a take
records. Real TCP sockets from 127.0.0.1 hold idle connections (no token, no request) to the page's port and
to OSCQuery's; then the session must still answer: record/stop and record/start over real UDP, the page over
HTTP and a real WebSocket, OSCQuery over HTTP, with no underrun and no traceback flood on stderr.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import websockets
from jack import jack_server
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

LIMIT = 1024  # descriptors: the usual default soft limit
IDLE = 2000  # idle connections held against the page's port (and as many against OSCQuery's)


def _limited() -> None:  # the session's process only (preexec_fn)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _start(tmp_path) -> tuple[subprocess.Popen, dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--device", "cpu", "--no-status",
         "--output-device", "system", "--osc-port", "0", "--web", "127.0.0.1:0", "--oscquery", "0",
         "--record-dir", str(tmp_path), "--prompt", "rock"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_limited)
    ports: dict[str, int] = {}
    lines = []
    while len(ports) < 3:
        line = proc.stderr.readline()
        lines.append(line)
        assert line, "".join(lines) + proc.stderr.read()
        for name, pattern in (("osc", r"listening for OSC on 127\.0\.0\.1:(\d+)"),
                              ("web", r"control surface: http://127\.0\.0\.1:(\d+)/"),
                              ("oscquery", r"OSCQuery on http://127\.0\.0\.1:(\d+)/")):
            if match := re.search(pattern, line):
                ports[name] = int(match.group(1))
    return proc, ports


def _osc(port: int, address: str, *args: object, answer: str, timeout: float = 20.0) -> list:
    """Send one message from a fresh socket; the arguments of the first reply at `answer` (or an error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(build_msg(address, list(args)).dgram, ("127.0.0.1", port))
        while True:
            reply = OscMessage(sock.recv(65535))
            if reply.address in (answer, "/musicsteer/error"):
                assert reply.address == answer, reply.params
                return reply.params


def _hold(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte (non-blocking connects: a full backlog must not stall us)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
    return held


def _page_answers(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.status == 200 and b"<html" in response.read().lower()

    async def hello() -> dict:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    assert asyncio.run(hello())["type"] == "hello"


def test_two_thousand_idle_connections_while_a_take_records(tmp_path) -> None:
    with jack_server(32000):
        proc, ports = _start(tmp_path)
        held: list[socket.socket] = []
        try:
            assert _osc(ports["osc"], "/musicsteer/record/start", "one.wav",
                        answer="/musicsteer/record/started") == [str(tmp_path / "one.wav")]
            for port in (ports["web"], ports["oscquery"]):
                held += _hold(port, IDLE)
            time.sleep(1.0)  # the session meets them all: accepted, refused or queued in the backlog
            _page_answers(ports["web"])
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['oscquery']}/?HOST_INFO", timeout=15) as answer:
                assert json.loads(answer.read())["OSC_PORT"] == ports["osc"]
            assert _osc(ports["osc"], "/musicsteer/record/stop", answer="/musicsteer/record/stopped") == [
                str(tmp_path / "one.wav")]
            assert _osc(ports["osc"], "/musicsteer/record/start", "two.wav",
                        answer="/musicsteer/record/started") == [str(tmp_path / "two.wav")]
            held += _hold(ports["web"], IDLE)  # more, while the second take records
            time.sleep(6.0)  # past the idle limit: the first ones are closed by now
            _page_answers(ports["web"])
            assert _osc(ports["osc"], "/musicsteer/record/stop", answer="/musicsteer/record/stopped") == [
                str(tmp_path / "two.wav")]
        finally:
            for sock in held:
                sock.close()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Too many open files" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    summary = re.search(r"underruns (\d+) \(([\d.]+) s\), rebuffers (\d+)", stderr)
    assert summary, stderr[-3000:]
    print(f"\n{2 * IDLE} idle connections to the page's port, {IDLE} to OSCQuery's, two takes: {summary.group(0)}")
    assert summary.group(1) == "0", summary.group(0)
    for name in ("one.wav", "two.wav"):
        assert (tmp_path / name).stat().st_size > 32000  # both takes hold audio
