"""OSC controller: UDP packets -> validated `Change`s on a session's control surface (DESIGN §3).

§3's addresses, plus `alpha f [ramp_s]`, `mix s f … [morph_s]`, `morph s f … morph_s`, `topp f`, `unsubscribe`.
Ints pass for floats, whole floats for ints; numbers must be finite; argless commands ignore arguments (TouchOSC
buttons send 1.0, then 0.0). Replies go to the sender's (ip, port): ping [args] -> pong [args]; record/start s ->
record/started s; record/stop -> record/stopped s (the file, "" if none); status -> /musicsteer/status: string keys
each followed by one value (step i seconds f rtf f generation_rtf f decode_rtf f buffer f underruns i alpha f site s
prompt s guidance f temperature f top_k i top_p f recording s layer i), then `mix` LAST with its name/weight pairs to
the end. subscribe -> a status now and each `status_interval`, and `/musicsteer/changed param value…` per applied
change (engine names: alpha mix layer site prompt guidance temperature top_k top_p seed; arguments as the inputs:
`alpha f [s]`, `mix s f … [s]`). A clamped value -> /musicsteer/clamped s f f (param, applied, asked; it WAS
applied). Refused -> /musicsteer/error s "<address>: <reason>" (one line; nothing applied; counted by kind in
`counters`). `rcvbuf`: as granted.

Threads (DESIGN §1, §4): a BlockingOSCUDPServer in one thread (the threading server lost 5–22 % at 1 kHz
under torch load) that never touches torch; a sender thread for subscribers, fed by a queue the engine
listener only appends to. Packets are checked strictly (python-osc pads short floats: a truncated `alpha
0.5` would apply 0.0). Bundle timetags are ignored: a sleep would stall the only serving thread.
Whoever reaches the port can steer and write recordings: loopback by default; `allow` takes IPs/networks.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import ipaddress
import math
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.osc_server import BlockingOSCUDPServer

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import NUMERIC_PARAMS, Change

if TYPE_CHECKING:
    from musicsteer.engine.session import StreamingSession

PREFIX = "/musicsteer"
NUMBER_ADDRESSES = {name.replace("_", ""): name for name in NUMERIC_PARAMS}  # topk -> top_k, alpha -> alpha…
MAX_SUBSCRIBERS = 32  # a bound: UDP senders are cheap to fake
_STOP = object()
# Bytes per fixed-size type tag. c, S, I are refused: python-osc skips them without consuming bytes.
_FIXED = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8, "T": 0, "F": 0, "N": 0, "[": 0, "]": 0}
# Engine refusals classified by the words validate_change / ControlState.check use (one source of rules).
_ENGINE_KINDS = (("unknown vector", "unknown_name"), ("must be finite", "non_finite"), ("needs a number", "bad_type"),
                 ("needs a whole", "bad_type"), ("needs text", "bad_type"), ("names are text", "bad_type"))
_BIND_ERRORS = {errno.EADDRINUSE: "OSC port {port} on {host} is in use",
                errno.EADDRNOTAVAIL: "OSC host {host} is not an address of this machine",
                errno.EACCES: "OSC port {port} on {host}: permission denied"}


class _Refused(MusicsteerError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # engine refusals carry no kind: _call classifies them by their words


def _text(label: str, args: tuple) -> str:
    if len(args) != 1 or not isinstance(args[0], str):
        shown = ", ".join(repr(a)[:40] for a in args) or "nothing"  # repr: the reply stays one line
        raise _Refused("bad_type", f"{label} needs one string, got {shown}")
    return args[0]


def _pairs(args: tuple) -> dict[str, Any]:
    if not args or len(args) % 2 or not all(isinstance(name, str) for name in args[::2]):
        raise _Refused("bad_type", f"needs name/weight pairs (s f …), got {', '.join(repr(a)[:40] for a in args)}")
    return dict(zip(args[::2], args[1::2], strict=True))  # weights are checked by the engine


def _string_end(data: bytes, start: int) -> int:
    nul = data.find(b"\0", start)  # NUL-terminated, padded to a multiple of 4 bytes
    if nul < 0 or nul + 4 - nul % 4 > len(data):
        raise ValueError("unterminated string")
    return nul + 4 - nul % 4


def check_message(data: bytes) -> None:
    """Raise ValueError unless `data` is exactly one well-formed OSC message, every byte accounted for."""
    if len(data) % 4 or data[:1] != b"/":
        raise ValueError("not an OSC message, or its size is not a multiple of 4")
    pos = _string_end(data, 0)
    if pos < len(data):  # OSC 1.0: a message without type tags has no arguments
        if data[pos : pos + 1] != b",":
            raise ValueError("type tags must start with ','")
        tags, pos = data[pos + 1 : data.index(b"\0", pos)].decode("latin-1"), _string_end(data, pos)
        for tag in tags:
            if tag in _FIXED:
                pos += _FIXED[tag]
            elif tag == "s":
                pos = _string_end(data, pos)
            elif tag == "b" and pos + 4 <= len(data):
                size = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4 + size + (-size) % 4
            else:
                raise ValueError(f"unsupported type tag {tag!r}" if tag != "b" else "truncated blob")
    if pos != len(data):
        raise ValueError("arguments do not fill the packet" if pos > len(data) else "bytes after the arguments")


class _Server(BlockingOSCUDPServer):
    max_packet_size = 65535  # socketserver's 8192 would silently cut big bundles
    owner: OscServer

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.owner._admit(client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.owner._packet(request[0], client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:  # not a traceback per bad packet
        with contextlib.suppress(Exception):  # and never raise: that would end serve_forever
            self.owner._refuse(client_address, "internal", "internal error while handling the packet")


class OscServer:
    def __init__(self, surface: StreamingSession, host: str = "127.0.0.1", port: int = 9000,
                 allow: list[str] | None = None, status_interval: float = 1.0, rcvbuf: int = 4 << 20) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise MusicsteerError(f"OSC port must be a whole number 0-65535, got {port!r}")
        if not (isinstance(status_interval, int | float) and 0 < status_interval < math.inf):
            raise MusicsteerError(f"OSC status interval must be > 0 seconds, got {status_interval!r}")
        self._surface, self.status_interval = surface, float(status_interval)
        try:  # no list: every sender (the host binding is the first gate)
            self._allow = [ipaddress.ip_network(str(a).strip(), strict=False) for a in allow] if allow else None
        except ValueError as exc:
            raise MusicsteerError(f"OSC allow list: {exc}") from None
        self._lock, self._counters = threading.Lock(), collections.Counter[str]()
        self.arrivals: collections.deque[tuple[int, Change]] = collections.deque(maxlen=16384)
        self._subscribers: dict[Any, None] = {}  # an insertion-ordered set of sender addresses
        self._outbox, self._threads = queue.SimpleQueue[Any](), list[threading.Thread]()
        self._running = self._closed = False
        self._dispatcher = self._routes()
        try:
            self._server = _Server((str(host), port), self._dispatcher)
        except OSError as exc:
            message = _BIND_ERRORS.get(exc.errno, "cannot listen for OSC on {host}:{port}: {why}")  # gaierror too
            raise MusicsteerError(message.format(host=host, port=port, why=exc.strerror or exc)) from None
        self._server.owner, sock = self, self._server.socket
        with contextlib.suppress(OSError):  # Linux caps it at net.core.rmem_max (and reports double)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @property
    def address(self) -> tuple[str, int]:
        return tuple(self._server.server_address[:2])  # type: ignore[return-value]

    @property
    def counters(self) -> collections.Counter[str]:
        """A snapshot (unseen keys read 0): received (datagrams), messages, applied, errors (all refusals) and
        by kind: bad_type non_finite unknown_address unknown_name malformed refused_sender (dropped, no reply)
        invalid (other engine refusals) internal; out_of_range (clamps), replies_sent, send_errors."""
        with self._lock:
            return collections.Counter(self._counters)

    def allows(self, ip: str) -> bool:
        """Whether the allow list admits a sender at `ip`."""
        addr = ipaddress.ip_address(ip.split("%")[0])
        addr = getattr(addr, "ipv4_mapped", None) or addr  # ::ffff:a.b.c.d from a dual-stack socket
        return self._allow is None or any(addr in net for net in self._allow)

    def start(self) -> None:
        if self._running or self._closed:
            return
        self._running = True
        self._surface.add_listener(self._on_applied)
        if hasattr(self._surface, "add_meter_listener"):
            self._surface.add_meter_listener(self._on_meter)
        self._threads = [threading.Thread(target=run, name=f"musicsteer-osc{tail}", daemon=True)
                         for run, tail in ((self._serve, ""), (self._send_loop, "-out"))]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if self._running:  # (shutdown() would wait forever for a serve_forever that never ran)
            self._running = False
            self._server.shutdown()
            self._outbox.put(_STOP)
            for thread in self._threads:
                thread.join(timeout=5)
        self._closed = True
        self._server.server_close()

    def _serve(self) -> None:
        while self._running:  # the handlers are guarded; this outlives any surprise in socketserver
            with contextlib.suppress(Exception):
                self._server.serve_forever(poll_interval=0.05)

    def _count(self, *keys: str) -> None:
        with self._lock:
            self._counters.update(keys)

    def _admit(self, client: Any) -> bool:
        self._count("received")
        with contextlib.suppress(Exception):  # verify_request runs outside socketserver's guard
            if self.allows(client[0]):
                return True
        self._count("errors", "refused_sender")
        return False

    def _packet(self, data: bytes, client: Any) -> None:
        try:
            bundle = data.startswith(b"#bundle\0")
            if not bundle:  # before parsing too: python-osc logs a warning per unknown type tag
                check_message(data)
            messages = [timed.message for timed in OscPacket(data).messages]
            for message in messages if bundle else ():  # a cut bundle shows as a short last message
                check_message(message.dgram)
        except Exception as exc:  # noqa: BLE001 - ValueError, python-osc's ParseError, UnicodeDecodeError
            self._refuse(client, "malformed", f"malformed OSC packet ({len(data)} bytes): {str(exc)[:80] or 'bad'}")
            return
        for message in messages:
            self._count("messages")
            handlers = list(self._dispatcher.handlers_for_address(message.address))
            if not handlers:  # a pattern python-osc cannot compile skips even the default handler
                self._refuse(client, "unknown_address", f"{ascii(message.address[:60])[1:-1]}: unknown address")
            for handler in handlers:
                handler.invoke(client, message)

    def _refuse(self, client: Any, kind: str, reason: str) -> None:
        self._count("errors", kind)
        self._send(client, f"{PREFIX}/error", " ".join(reason.split())[:300])  # one line; a blob's repr is long

    def _send(self, clients: Any, address: str, *args: Any) -> None:
        """Send one message to a sender's address, or to each of a list of them."""
        try:
            builder = OscMessageBuilder(address)
            for arg in args:
                builder.add_arg(arg)  # python-osc picks i/h by size, f, s, T/F
            dgram = builder.build().dgram
            for client in clients if isinstance(clients, list) else [clients]:
                with contextlib.suppress(OSError):  # one unreachable subscriber must not starve the rest
                    self._server.socket.sendto(dgram, client)
                    self._count("replies_sent")
        except Exception:  # noqa: BLE001 - an echoed argument python-osc cannot encode
            self._count("send_errors")

    def _routes(self) -> Dispatcher:
        # A wildcard pattern reaches each handler it matches as its address: bind, never parse, the route.
        routes: dict[str, Callable[[Any, tuple], None]] = {
            name: functools.partial(self._set_number, param) for name, param in NUMBER_ADDRESSES.items()}
        routes |= {
            "steer": lambda client, args: self._submit(client, Change("mix", {_text("steer", args): 1.0})),
            "site": lambda client, args: self._submit(client, Change("site", _text("site", args))),
            "prompt": lambda client, args: self._submit(client, Change("prompt", _text("prompt", args))),
            "mix": functools.partial(self._mix, False), "morph": functools.partial(self._mix, True),
            "record/start": lambda client, args: self._send(  # opens the file; the session's writer does the rest
                client, f"{PREFIX}/record/started", str(self._surface.start_recording(_text("record/start", args)))),
            "record/stop": lambda client, args: self._send(
                client, f"{PREFIX}/record/stopped", str(self._surface.stop_recording() or "")),
            "subscribe": functools.partial(self._subscribe, True),
            "unsubscribe": functools.partial(self._subscribe, False),
            "ping": lambda client, args: self._send(client, f"{PREFIX}/pong", *args),
            "status": lambda client, args: self._send(client, f"{PREFIX}/status", *self._status_args()),
        }
        self.addresses = tuple(f"{PREFIX}/{path}" for path in routes)  # the address space, for docs and tests
        dispatcher = Dispatcher(strict_timing=False)
        for path, handler in routes.items():
            dispatcher.map(f"{PREFIX}/{path}", functools.partial(self._call, handler), needs_reply_address=True)
        dispatcher.set_default_handler(lambda client, address, *args: self._refuse(
            client, "unknown_address", f"{ascii(address[:60])[1:-1]}: unknown address"), needs_reply_address=True)
        return dispatcher

    def _call(self, handler: Callable[[Any, tuple], None], client: Any, address: str, *args: Any) -> None:
        """Run one handler; whatever it raises becomes a counted error reply, never an escape."""
        try:
            handler(client, args)
        except MusicsteerError as exc:
            kind = getattr(exc, "kind", None) or next((k for w, k in _ENGINE_KINDS if w in str(exc)), "invalid")
            self._refuse(client, kind, f"{address}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a running session survives every message
            self._refuse(client, "internal", f"{address}: internal error ({type(exc).__name__})")

    def _submit(self, client: Any, change: Change) -> None:
        step = self._surface.step  # read before submit: the change cannot land before this step
        checked = self._surface.submit(change)
        self.arrivals.append((step, checked))
        self._count("applied")
        if checked.clamped:
            self._count("out_of_range")
            self._send(client, f"{PREFIX}/clamped", checked.param, checked.value, change.value)

    def _set_number(self, param: str, client: Any, args: tuple) -> None:
        # Types, finiteness, whole numbers and ranges are validate_change's: one set of rules for all inputs.
        if not (len(args) == 1 or (param == "alpha" and len(args) == 2)):
            ramp = " (and ramp seconds)" if param == "alpha" else ""
            raise _Refused("bad_type", f"{param} needs one number{ramp}, got {len(args)} arguments")
        self._submit(client, Change(param, *args))

    def _mix(self, morph: bool, client: Any, args: tuple) -> None:
        cut = 1 if morph and len(args) == 2 else len(args) // 2 * 2  # morph: name s | pairs s; mix: pairs [s]
        if morph and len(args) != cut + 1:
            raise _Refused("bad_type", f"morph needs a name (or name/weight pairs) then seconds, got {len(args)} args")
        mix = {_text("morph", args[:1]): 1.0} if cut == 1 else _pairs(args[:cut])
        self._submit(client, Change("mix", mix, args[cut] if len(args) > cut else 0.0))

    def _subscribe(self, on: bool, client: Any, args: tuple) -> None:
        with self._lock:
            if on and client not in self._subscribers and len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise _Refused("invalid", f"too many subscribers ({MAX_SUBSCRIBERS})")
            if on:
                self._subscribers[client] = None
            else:
                self._subscribers.pop(client, None)
                return
        self._outbox.put(client)  # a status at once, so the subscriber's widgets start in sync

    def _status_args(self) -> list[Any]:
        status = self._surface.status()
        args = [x for key, value in status.items() if isinstance(value, str | int | float) for x in (key, value)]
        args += ["layer", int(status["layers"][0])] if status.get("layers") else []  # the first steered layer
        return [*args, "mix", *(x for name, w in (status.get("mix") or {}).items() for x in (name, float(w)))]

    def _on_meter(self, step: int, scores: dict[str, float]) -> None:
        if self._running and self._subscribers:
            self._outbox.put(("meter", scores))

    def _on_applied(self, step: int, changes: list[Change]) -> None:
        if self._running and self._subscribers:  # only an enqueue: this runs between tokens
            self._outbox.put(changes)

    def _send_loop(self) -> None:
        due = time.monotonic() + self.status_interval
        while True:
            item = None
            with contextlib.suppress(queue.Empty):
                item = self._outbox.get(timeout=max(0.0, due - time.monotonic()))
            if item is _STOP:
                return
            try:
                with self._lock:
                    subscribers = list(self._subscribers)
                if isinstance(item, tuple) and item[0] == "meter":  # /musicsteer/meter label score ...
                    self._send(subscribers, f"{PREFIX}/meter", *(x for pair in item[1].items() for x in pair))
                elif isinstance(item, tuple):  # a new subscriber's address
                    self._send(item, f"{PREFIX}/status", *self._status_args())
                for change in item if isinstance(item, list) else ():
                    value = change.value  # arguments mirror the input forms: mix pairs, then seconds
                    args = [x for pair in value.items() for x in pair] if isinstance(value, dict) else [value]
                    self._send(subscribers, f"{PREFIX}/changed", change.param, *args,
                               *([float(change.seconds)] if change.seconds else []))
                if time.monotonic() >= due:
                    due = max(due + self.status_interval, time.monotonic())  # no burst after a stall
                    self._send(subscribers, f"{PREFIX}/status", *(self._status_args() if subscribers else ()))
            except Exception:  # noqa: BLE001 - one bad status must not end subscriber traffic
                self._count("internal")
