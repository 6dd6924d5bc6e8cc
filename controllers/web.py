"""The browser control surface: `play --web [HOST:]PORT` serves a page that steers the session.

Served by starlette on uvicorn (no hand-written HTTP or WebSocket code) from a thread of its own with
its own asyncio loop; it never touches torch. The page (controllers/web_static/: HTML, CSS and plain
JavaScript shipped in the package, no CDN, no build step) is generated from the parameter table sent
in its first message, so a new knob appears there at once. Changes travel over one WebSocket per page
into the same `ControlState.submit` as OSC and MIDI (checked by the table, logged, replayable);
every applied change, whatever moved it, comes back to every open page, so pages stay in sync with
each other and with MIDI, OSC, presets and automation.

Protocol (JSON text frames; controllers/web_static/app.js is its client):
  page -> engine: {"type": "set", "param": P, "value": V[, "seconds": S]} (V as the table's type: a
    number, text, {vector: weight} for mix, [layers]); {"type": "preset", "name": N};
    {"type": "save", "name": N[, "seconds": S]}; {"type": "record", "action": "start"|"stop"[, "name": N]}.
  engine -> page: "hello" (the table's live rows, vectors, layer count, presets, values, status, the
    analyser's band centres), "values" (what one token boundary applied), "status" (each
    `status_interval`), "level" (what is playing now, every LEVEL_INTERVAL), "meter", "notice",
    "presets", and replies: "error" (a refusal: one line), "clamped", "recording", "saved".

Security: beyond loopback every request needs the token printed at start (`?token=` once, then an
HttpOnly SameSite=Strict cookie), whatever address it comes from, as Jupyter does. On loopback the
Host header must name loopback (a DNS-rebinding page cannot reach it). The WebSocket refuses a
foreign Origin, so a page open in the performer's browser cannot drive the session. Recordings
started here go through the session's confined recordings folder, as OSC's do. Every refusal
(malformed JSON, a bad value, a flood past RATE messages a second) is counted by kind in the
control state and answered at most once per message; nothing is logged per message.

Bounds (what a peer can make the session hold): controllers/web_connections.py accepts on the port,
MAX_CONNECTIONS open at once, one holding no request closed after REQUEST_SECONDS, the oldest idle one
making room for a new one; MAX_PAGES open pages, MAX_PAGES_PER_HOST from one host, each with a bounded
outbox and a RATE of messages. A new page past either takes the place of the page heard from longest
ago (of its own host, else of the host holding the most), closed with code DISPLACED and a reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import socket
import threading
import time
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from musicsteer.engine.errors import Malformed, MusicsteerError, one_line
from musicsteer.engine.events import Applied, Event, MeterReading, Notice

from .addresses import BAD_ADDRESS, bind_error, is_loopback
from .feedback import applied_values
from .presets import bank_of
from .web_connections import Doorman
from .web_messages import PageMessage, hello, json_safe, parse_message

if TYPE_CHECKING:
    from musicsteer.engine.session import StreamingSession

    from .presets import PresetBank

STATIC = files("musicsteer.controllers") / "web_static"
COOKIE = "musicsteer_token"
MAX_MESSAGE = 64 * 1024  # bytes a page may send in one frame (uvicorn closes the socket past it)
MAX_PAGES = 16  # open pages at once
MAX_PAGES_PER_HOST = MAX_PAGES // 2  # of them from one host: one host cannot take every place
DISPLACED = 4001  # the close code of a page closed to make room for a newer one (the page does not reconnect)
RATE = 500  # messages a second one page may send (a token bucket); past it they are dropped and counted busy
OUTBOX = 512  # messages waiting for a slow page; past it the oldest news is dropped (a status comes again)
LEVEL_INTERVAL = 0.05  # s: the level view's refresh (20 Hz: smooth on a phone, a few hundred bytes each)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class WebSurface:
    def __init__(self, session: StreamingSession, host: str = "127.0.0.1", port: int = 8910,
                 presets: PresetBank | None = None, status_interval: float = 0.25) -> None:
        """Bind at once (a port in use is one line before anything is generated); `start` serves."""
        self._session, self._control, self._presets = session, session.control, presets
        self.status_interval = status_interval
        self.host = host
        self.token = None if is_loopback(host) else secrets.token_urlsafe(18)
        self._socket = _bind(host, port)
        self.cookie = f"{COOKIE}_{self.address[1]}"  # per port: two sessions on one host keep their own tokens
        self._events: collections.deque[Event] = collections.deque(maxlen=4096)
        self._pages: set[_Page] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        config = uvicorn.Config(self._app(), log_level="error", access_log=False, log_config=None, http="h11",
                                ws_max_size=MAX_MESSAGE, ws_ping_interval=10, ws_ping_timeout=10,
                                lifespan="on", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._doorman = Doorman(self._socket, self._server, self._count)  # the accept loop: bounded
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return tuple(self._socket.getsockname()[:2])  # type: ignore[return-value]

    @property
    def url(self) -> str:
        """The URL to open: the host as given (0.0.0.0: this machine's name), with the token if one is needed."""
        host, port = self.address
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> None:
        self._session.listeners.add(self._on_event)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": []},  # the doorman accepts
                                        name="musicsteer-web", daemon=True)
        self._thread.start()
        end = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < end:
            time.sleep(0.01)
        if not self._server.started:
            raise MusicsteerError("the web surface did not start (uvicorn)")

    def stop(self) -> None:
        self._session.listeners.remove(self._on_event)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()

    def _on_event(self, event: Event) -> None:  # the generation thread: an append, nothing more
        self._events.append(event)

    def _count(self, kind: str) -> None:
        self.counters[kind] += 1

    # -- the app ------------------------------------------------------------------------------
    def _app(self) -> Starlette:
        hosts = [*LOOPBACK_HOSTS, self.host.strip("[]")] if is_loopback(self.host) else ["*"]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> Any:
            task = asyncio.create_task(self._broadcast())
            self._doorman.open()
            yield
            self._doorman.close()
            task.cancel()

        app = Starlette(routes=[Route("/", self._index), WebSocketRoute("/ws", self._websocket),
                                Mount("/static", StaticFiles(directory=str(STATIC)), name="static")],
                        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)], lifespan=lifespan)
        app.add_middleware(_TokenGate, surface=self)
        return app

    def authorised(self, conn: HTTPConnection) -> bool:
        if self.token is None:
            return True
        given = conn.query_params.get("token") or conn.cookies.get(self.cookie) or ""
        return secrets.compare_digest(given.encode(), self.token.encode())

    async def _index(self, request: Request) -> Response:
        if self.token and request.query_params.get("token"):  # the token becomes a cookie; the URL drops it
            response: Response = RedirectResponse("/", status_code=303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
            return response
        return FileResponse(str(STATIC / "index.html"), headers=_PAGE_HEADERS)

    async def _websocket(self, ws: WebSocket) -> None:
        origin, host = ws.headers.get("origin"), ws.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            self._count("refused_origin")
            self._control.report("refused_origin")
            await ws.close(code=1008)  # before accept: uvicorn answers the handshake with 403
            return
        host = ws.client.host if ws.client else ""
        self._make_room(host)
        await ws.accept()
        page = _Page(ws, host)
        self._pages.add(page)
        page.put(hello(self._session, self._presets))
        writer = asyncio.create_task(page.write())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                page.heard = time.monotonic()
                if not page.admit():
                    self._count("busy")
                    self._control.report("busy")
                elif message.get("text") is None:  # a binary frame: the protocol is JSON text
                    self._handle(page, None)
                else:
                    self._handle(page, message["text"])
        except (WebSocketDisconnect, RuntimeError):  # closed
            pass
        finally:
            self._pages.discard(page)
            writer.cancel()

    def _make_room(self, host: str) -> None:
        """Before a page from `host` opens: past MAX_PAGES_PER_HOST pages from that host, or MAX_PAGES in all,
        the page heard from longest ago of that host (in all: of the host holding the most) is closed with a
        reason, so a fresh page (the performer's) always opens and one host never holds every place."""
        mine = [p for p in self._pages if p.host == host]
        if len(mine) < MAX_PAGES_PER_HOST and len(self._pages) < MAX_PAGES:
            return
        if len(mine) < MAX_PAGES_PER_HOST:  # of the hosts holding the most, the page heard from longest ago
            held = collections.Counter(p.host for p in self._pages)
            mine = [p for p in self._pages if held[p.host] == max(held.values())]
        victim = min(mine, key=lambda p: p.heard)
        self._pages.discard(victim)  # its place is free now; its close frame follows
        self._count("pages_displaced")
        victim.displace(f"a newer page took its place ({MAX_PAGES_PER_HOST} at most from one host, {MAX_PAGES} "
                        "in all): reload to take one again")  # (a close reason holds 123 bytes)

    def _handle(self, page: _Page, text: str | None) -> None:
        """One message from a page (None: a binary frame): act, and answer a refusal once (counted once, by kind)."""
        self._count("messages")
        try:
            if text is None:
                raise Malformed("a binary frame: messages are JSON text")
            self._act(page, parse_message(text))
        except MusicsteerError as exc:
            self._control.refused(exc)
            self._count("refused")
            page.put({"type": "error", "text": one_line(str(exc), 300)})
        except Exception as exc:  # noqa: BLE001 - a running session survives every message
            self._control.report("internal")
            page.put({"type": "error", "text": f"internal error ({type(exc).__name__})"})

    def _act(self, page: _Page, message: PageMessage) -> None:
        if message.kind == "set":
            checked = self._control.submit(message.change, source=page.host)  # (engine/prompts.py)
            if checked.clamped:
                page.put({"type": "clamped", "param": checked.param, "applied": json_safe(checked.value),
                          "asked": json_safe(message.change.value)})
        elif message.kind == "preset":
            bank_of(self._presets).recall(message.name)
        elif message.kind == "save":
            bank_of(self._presets).save(message.name, message.seconds)
            page.put({"type": "saved", "name": message.name})
            self._to_all({"type": "presets", "names": self._presets.names()})
        else:
            self._record(page, message)

    def _record(self, page: _Page, message: PageMessage) -> None:
        loop = asyncio.get_running_loop()
        session = self._session

        def done(path: Any, error: str | None) -> None:  # the takes thread
            reply = {"type": "recording", "action": message.action, "path": str(path or "")} if error is None \
                else {"type": "error", "text": one_line(f"record {message.action}: {error}", 300)}
            if error is not None:
                self._control.report("refused_take")
            with contextlib.suppress(RuntimeError):  # the server stopped meanwhile: no page to tell
                loop.call_soon_threadsafe(page.put, reply)

        action = (lambda: session.start_recording(message.name, live=True)) if message.action == "start" \
            else session.stop_recording
        session.recordings.later(action, done, message.action, page.host)

    def _to_all(self, message: dict) -> None:
        for page in list(self._pages):
            page.put(message)

    async def _broadcast(self) -> None:
        """Engine news to every page: applied values at once, the level at 20 Hz, the status each interval."""
        due, last_level = 0.0, None
        while True:
            await asyncio.sleep(LEVEL_INTERVAL)
            try:
                while self._events:
                    self._tell(self._events.popleft())
                level = self._session.level()
                if self._pages and level is not last_level:  # a new block playing (blocks outlast a tick)
                    last_level = level
                    self._to_all({"type": "level", **level})
                if self._pages and time.monotonic() >= due:
                    due = time.monotonic() + self.status_interval
                    self._to_all({"type": "status", "status": json_safe(self._session.status())})
            except Exception:  # noqa: BLE001 - one bad status must not end the page's news
                self._count("internal")

    def _tell(self, event: Event) -> None:
        if isinstance(event, Applied):
            self._to_all({"type": "values", "step": event.step, "values": json_safe(applied_values(event))})
        elif isinstance(event, MeterReading):
            self._to_all({"type": "meter", "scores": json_safe(event.scores)})
        elif isinstance(event, Notice):
            self._to_all({"type": "notice", "level": event.level, "text": one_line(event.text, 300)})


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # Only this server's own files and WebSocket; never framed by another page (clickjacking).
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


class _TokenGate:
    """Every HTTP request and WebSocket handshake carries the token (query or cookie) when one is needed."""

    def __init__(self, app: Any, surface: WebSurface) -> None:
        self.app, self.surface = app, surface

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not self.surface.authorised(HTTPConnection(scope)):
            self.surface._count("refused_token")
            self.surface._control.report("refused_token")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = PlainTextResponse("musicsteer: this page needs the token printed when the session "
                                         "started (open the URL it printed)", status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Page:
    """One open page: a bounded outbox drained by its writer task (a slow phone never blocks the rest)."""

    def __init__(self, ws: WebSocket, host: str) -> None:
        self.ws, self.host = ws, host
        self.heard = time.monotonic()  # when it last sent a message (or opened)
        self.closing: asyncio.Task | None = None  # its close, when it was displaced
        self.outbox: asyncio.Queue[dict] = asyncio.Queue(OUTBOX)
        self.dropped = 0
        self._budget, self._refilled = float(RATE), time.monotonic()

    def put(self, message: dict) -> None:
        if self.outbox.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.outbox.get_nowait()  # the oldest news goes: statuses and values come again
            self.dropped += 1
        self.outbox.put_nowait(message)

    def displace(self, reason: str) -> None:
        """Close it (code DISPLACED, `reason`) from a task of its own: a page that reads nothing must not
        hold up the one taking its place (its pings end it then)."""
        async def close() -> None:
            with contextlib.suppress(Exception):  # gone already
                await self.ws.close(code=DISPLACED, reason=reason)
        self.closing = asyncio.create_task(close())

    def admit(self) -> bool:
        now = time.monotonic()
        self._budget = min(RATE, self._budget + (now - self._refilled) * RATE)
        self._refilled = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True

    async def write(self) -> None:
        with contextlib.suppress(Exception):  # the page went away: the reader ends the connection
            while True:
                await self.ws.send_text(json.dumps(await self.outbox.get(), allow_nan=False))


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); a bad host or a busy port is one line."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(64)
        except OSError:
            sock.close()
            raise
    except BAD_ADDRESS as exc:
        raise bind_error(exc, "web", host, port) from None
    return sock


__all__ = ["WebSurface"]
