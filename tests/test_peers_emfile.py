"""Issue 28 (2): an accept loop that runs out of descriptors backs off; it never spins writing tracebacks.

A child process serves the page's accept loop (controllers/web_connections.Doorman under uvicorn, as the
web surface runs it) and an OSCQuery HTTP server, then uses up every descriptor its RLIMIT_NOFILE allows.
Real TCP peers from 127.0.0.1 then connect to both ports. Counted, not timed: over 3 s each loop may fail
accept() about once per back-off (0.5 s), where a spinning loop fails thousands of times (before the fix:
asyncio logged a traceback per failure, and socketserver retried at once, silently). Once descriptors are
free again, both answer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

CHILD = r"""
import asyncio, contextlib, json, resource, socket, sys, threading
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from musicsteer.controllers.web_connections import Doorman
from musicsteer.controllers.oscquery import OscQueryService

counts = {}
def count(kind):
    counts[kind] = counts.get(kind, 0) + 1

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(64)

@contextlib.asynccontextmanager
async def lifespan(app):
    doorman.open()
    yield
    doorman.close()

async def index(request):
    return PlainTextResponse("ok")

server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/", index)], lifespan=lifespan), http="h11",
                                       log_level="error", log_config=None, lifespan="on"))
doorman = Doorman(sock, server, count)
threading.Thread(target=server.run, kwargs={"sockets": []}, daemon=True).start()
query = OscQueryService(("127.0.0.1", 9000), "127.0.0.1", 0, dict, advertise=False)
query.start()
while not server.started:
    pass
print(json.dumps([sock.getsockname()[1], query.address[1]]), flush=True)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
fillers = []
with contextlib.suppress(OSError):
    while True:
        fillers.append(open("/dev/null"))
print("full", flush=True)
sys.stdin.readline()
report = {"web": counts.get("accept_failed", 0), "oscquery": query.errors}
for f in fillers:
    f.close()
print(json.dumps(report), flush=True)
sys.stdin.readline()
query.stop()
server.should_exit = True
"""


def test_accept_loops_out_of_descriptors_back_off_and_recover() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peers: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        web, oscquery = json.loads(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "full"
        for port in (web, oscquery):
            for _ in range(20):
                peer = socket.socket()
                peer.setblocking(False)
                peer.connect_ex(("127.0.0.1", port))
                peers.append(peer)
        time.sleep(3.0)  # the window over which failures are counted
        proc.stdin.write("report\n")
        proc.stdin.flush()
        failures = json.loads(proc.stdout.readline())
        assert 1 <= failures["web"] <= 20, failures  # ~6 back-offs in 3 s; a spin is thousands
        assert 1 <= failures["oscquery"] <= 20, failures
        for port in (web, oscquery):  # descriptors are free again: both answer
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                assert answer.status == 200
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        _, stderr = proc.communicate(timeout=30)
    finally:
        for peer in peers:
            peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr and "out of system resource" not in stderr, stderr[-2000:]


def test_a_session_raises_its_descriptor_limit_to_the_hard_one() -> None:
    """open_controllers keeps descriptors for the session's own needs: the soft limit goes up to the hard one
    (peers are capped far below either). Run in a child whose soft limit is 1,024 under a hard 4,096."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)); "
            "from musicsteer.commands.live_controls import _descriptors; _descriptors(); "
            "print(*resource.getrlimit(resource.RLIMIT_NOFILE))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4096", "4096"]
