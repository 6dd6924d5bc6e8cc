"""OSC controller: UDP packets -> validated `Change`s on a session's control state, and two-way OSC.
The contract (addresses, replies, what subscribers are told) is docs/design.md §4 and README's OSC.

The address space is the parameter table's (engine/params.py): each live row's `osc` addresses under
/musicsteer/, numbers as OSC i, h, f or d (never r, m, T/F…: a colour is not a strength), text as s;
plus SESSION_COMMANDS. Argless commands ignore arguments (TouchOSC buttons send 1.0, then 0.0).
Replies go to the sender's (ip, port): a clamp -> /musicsteer/clamped, a refusal -> one
/musicsteer/error per datagram (a bundle's refusals summed up in it), counted by kind in the
session's control state and never logged per element; record/start and record/stop answer once the
session's takes thread has opened or closed the files.

Two-way: what the engine does goes to subscribers and the `feedback` targets (`--osc-feedback`):
controllers/osc_broadcast.py. Another engine's output arriving here (OUTPUT_ONLY) is ignored unanswered.

Subscriptions expire (controllers/osc_subscribers.py): one lasts SUBSCRIPTION_SECONDS from the last
datagram its address sent, renewed by /musicsteer/subscribe, ping or any control; past MAX_SUBSCRIBERS
a new one takes the place of the one heard from longest ago, which its next datagram (a ping) subscribes
again. The full state a subscribe brings is budgeted per address and in total (DUMPS_PER_SECOND): past
it, a later status tick sends it. `--osc-feedback` targets never expire.

Threads: a BlockingOSCUDPServer in one thread (the threading server lost 5–22 % at 1 kHz under
torch load) that never touches torch; the broadcaster's sender thread for subscribers. Packets are
read strictly (controllers/osc_packet.py); osc_args.py turns arguments into engine values and back.
Bundle time tags are ignored: a sleep would stall the only serving thread. Whoever reaches the port
can steer and write recordings: loopback by default; `allow` takes IPs/networks.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from musicsteer.engine.errors import BadType, MusicsteerError, UnknownName, one_line
from musicsteer.engine.events import Change
from musicsteer.engine.params import LIVE, OSC_ADDRESSES, PARAMS

from . import osc_args
from .addresses import BAD_ADDRESS, bind_error, udp_target
from .osc_broadcast import PREFIX, Broadcaster, Reply, send
from .osc_packet import Message, parse_packet
from .osc_subscribers import STATUS_REPLIES_PER_SECOND, SUBSCRIPTION_SECONDS, Budget, Subscribers
from .presets import bank_of

if TYPE_CHECKING:
    from musicsteer.engine.session import StreamingSession

    from .presets import PresetBank

MAX_CLAMP_REPLIES = 8  # per datagram
# Messages per second the server handles (a token bucket holding one second's worth); past it datagrams
# are dropped unread, counted as `busy`, unanswered (no reply flood): a flood of valid changes on a
# small machine would otherwise take the CPU the generation and decode threads need.
RATE = 2000
# The address space: the parameter table's live addresses, then the session's own commands.
SESSION_COMMANDS = ("record/start", "record/stop", "preset", "preset/save", "subscribe", "unsubscribe", "ping",
                    "status")
ADDRESSES = tuple(f"{PREFIX}/{path}" for path in (*OSC_ADDRESSES, *SESSION_COMMANDS))
TAKE_REPLIES = {"record/start": "record/started", "record/stop": "record/stopped"}
NUMBER = tuple(osc_args.NUMBER_TAGS)
PATTERN_CHARS = set("*?[]{}")  # OSC address patterns: refused, not matched (see _route_table)
# What this server sends and never takes: arriving here, it is another engine's output (its feedback
# pointed at this port), ignored without an answer, or two engines would trade errors forever.
OUTPUT_ONLY = frozenset(f"{PREFIX}/{path}" for path in (
    "error", "warning", "changed", "meter", "clamped", "pong", "preset/saved", *TAKE_REPLIES.values()))


class _Server(BlockingOSCUDPServer):
    max_packet_size = 65535  # socketserver's 8192 would silently cut big bundles
    owner: OscServer

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.owner._admit(client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.owner._packet(request[0], client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:  # not a traceback per bad packet
        with contextlib.suppress(Exception):  # and never raise: that would end serve_forever
            self.owner._count("internal")


class OscServer:
    def __init__(self, surface: StreamingSession, host: str = "127.0.0.1", port: int = 9000,
                 allow: list[str] | None = None, status_interval: float = 1.0, rcvbuf: int = 4 << 20,
                 feedback: list[tuple[str, int]] | None = None, presets: PresetBank | None = None,
                 subscription_seconds: float = SUBSCRIPTION_SECONDS) -> None:
        """`feedback`: (host, port) targets told every applied value, like permanent subscribers (a
        surface's own OSC port: `--osc-feedback`); `presets`: the bank /musicsteer/preset recalls from;
        `subscription_seconds`: how long a subscriber lasts after the last datagram it sent."""
        port = PARAMS["osc_port"].check(port)[0]
        self.status_interval = PARAMS["status_interval"].check(status_interval)[0]
        self._surface, self._control = surface, surface.control
        try:  # no list: every sender (the host binding is the first gate)
            self._allow = [ipaddress.ip_network(str(a).strip(), strict=False) for a in allow] if allow else None
        except ValueError as exc:
            raise MusicsteerError(f"OSC allow list: {one_line(exc, 120)}") from None
        self._lock, self._counters = threading.Lock(), collections.Counter[str]()
        self.arrivals: collections.deque[tuple[int, Change]] = collections.deque(maxlen=16384)
        self._subscribers = Subscribers(self._counters, self._lock, subscription_seconds)
        self._presets = presets
        self._thread: threading.Thread | None = None
        self._running = self._closed = False
        self._budget, self._refilled = float(RATE), time.monotonic()
        self._status_replies = Budget(STATUS_REPLIES_PER_SECOND, STATUS_REPLIES_PER_SECOND)  # the server thread's
        self._routes = self._route_table()
        try:
            self._server = _Server((str(host), port), Dispatcher())  # (routing is ours: _route_table)
        except BAD_ADDRESS as exc:
            raise bind_error(exc, "OSC", host, port) from None
        self._server.owner, sock = self, self._server.socket
        with contextlib.suppress(OSError):  # Linux caps it at net.core.rmem_max (and reports double)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        try:
            self.feedback = [udp_target(*target, self.address, "OSC feedback target") for target in feedback or ()]
        except MusicsteerError:
            self._server.server_close()  # refused: the port is free again at once
            raise
        self.broadcaster = Broadcaster(surface, self._subscribers, self.feedback, sock, self.status_interval,
                                       self._count)  # what subscribers and feedback targets are told

    @property
    def address(self) -> tuple[str, int]:
        return tuple(self._server.server_address[:2])  # type: ignore[return-value]

    @property
    def counters(self) -> collections.Counter[str]:
        """A snapshot (unseen keys read 0) of this server's traffic: received (datagrams), messages,
        applied, errors (its refusals) and the same by kind (bad_type, non_finite, out_of_range,
        too_large, unknown_name (an address, a vector), malformed, busy, invalid, refused_sender: dropped with
        no reply), clamped, replies_sent, send_errors, internal, subscribers_dropped (made room for a new
        one), subscribers_expired (not heard from for subscription_seconds), subscribers_restored (a dropped
        one heard from again) and dumps_deferred (a full state put off to a later tick: the budget was spent)."""
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
        self.broadcaster.start()
        self._thread = threading.Thread(target=self._serve, name="musicsteer-osc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._running:  # (shutdown() would wait forever for a serve_forever that never ran)
            self._running = False
            self._server.shutdown()
            self.broadcaster.stop()
            if self._thread is not None:
                self._thread.join(timeout=5)
        self._closed = True
        self._server.server_close()
        self.broadcaster.close()

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
        self._control.report("refused_sender")
        return False

    # -- one datagram -------------------------------------------------------------------------------
    def _packet(self, data: bytes, client: Any) -> None:
        """Apply every message of a datagram; answer with at most one error (the first reason and a count)."""
        now = time.monotonic()
        self._budget = min(RATE, self._budget + (now - self._refilled) * RATE)
        self._refilled = now
        if self._budget < 1:
            self._count("errors", "busy")
            self._control.report("busy")
            return
        if self._subscribers.heard(client, now):  # a subscriber pushed out by newer ones, back
            self.broadcaster.put(client)
        replies = _Replies()
        try:
            messages = parse_packet(data)
        except MusicsteerError as exc:
            self._refused(replies, exc.kind, f"malformed OSC packet ({len(data)} bytes): {exc}")
            messages = []
        self._budget -= max(1, len(messages))
        for message in messages:
            self._count("messages")
            try:
                if message.address in OUTPUT_ONLY or osc_args.status_reply(message):
                    self._count("ignored")  # another engine's output (feedback pointed here): never answered
                    continue
                route = self._routes.get(message.address)
                if route is None:
                    raise UnknownName("unknown address" if not set(message.address) & PATTERN_CHARS
                                      else "address patterns (* ? [ ] { }) are not supported: send the address")
                route(client, message, replies)
            except MusicsteerError as exc:
                self._refused(replies, exc.kind, f"{osc_args.address(message)}: {exc}", exc)
            except Exception as exc:  # noqa: BLE001 - a running session survives every message
                self._refused(replies, "internal",
                              f"{osc_args.address(message)}: internal error ({type(exc).__name__})")
        for address, args in replies.out:
            self._send(client, address, *args)
        if replies.refused:
            first, count = replies.first, replies.refused
            text = first if count == 1 else f"{count} of {len(messages) or 1} messages refused; first: {first}"
            self._send(client, f"{PREFIX}/error", one_line(text, 300))

    def _refused(self, replies: _Replies, kind: str, reason: str, err: MusicsteerError | None = None) -> None:
        self._count("errors", kind)
        if err is not None:  # counted once: a refusal from ControlState.submit was counted there
            self._control.refused(err)
        else:
            self._control.report(kind)
        replies.refused += 1
        replies.first = replies.first or reason

    def _route_table(self) -> dict[str, Callable[[Any, Message, _Replies], None]]:
        """Full address -> handler. Matched exactly: python-osc's pattern matching compiles each address
        into a backtracking regex, and `/musicsteer/*****…Q` took seconds of GIL per datagram."""
        routes: dict[str, Callable[[Any, Message, _Replies], None]] = {
            address: lambda client, msg, replies, row=row, address=address: self._submit(
                client, msg, osc_args.change(row, address, msg), replies) for address, row in OSC_ADDRESSES.items()}
        routes |= {
            "record/start": self._record_start,
            "record/stop": lambda client, msg, replies: self._later(client, "record/stop",
                                                                    self._surface.stop_recording),
            "preset": lambda client, msg, replies: bank_of(self._presets).recall(osc_args.text("preset", msg)),
            "preset/save": self._save_preset,
            "subscribe": lambda client, msg, replies: self._subscribe(True, client),
            "unsubscribe": lambda client, msg, replies: self._subscribe(False, client),
            "ping": lambda client, msg, replies: replies.out.append((f"{PREFIX}/pong", list(msg.args))),
            "status": self._status_request,
        }
        table = {f"{PREFIX}/{path}": handler for path, handler in routes.items()}
        assert tuple(table) == ADDRESSES  # one address space, one definition
        return table

    def _submit(self, client: Any, message: Message, change: Change, replies: _Replies) -> None:
        step = self._surface.step  # read before submit: the change cannot land before this step
        try:  # the source is the sender's host: one host's prompts hold one place (engine/prompts.py)
            checked = self._control.submit(change, source=client[0])
        except MusicsteerError as exc:  # refused by the table, the model or the vectors (and counted there)
            self._refused(replies, exc.kind, f"{osc_args.address(message)}: {exc}", exc)
            return
        self.arrivals.append((step, checked))
        self._count("applied")
        if checked.clamped:
            self._count("clamped")
            row = LIVE[checked.param]
            clamps = [(checked.param, checked.value, change.value), (row.glide and row.glide[1], checked.seconds,
                                                                     change.seconds)]
            for name, applied, asked in clamps:  # what was clamped: the value, its glide time, or both
                if name and osc_args.scalar(applied) != osc_args.scalar(asked) and len(replies.out) < MAX_CLAMP_REPLIES:
                    replies.out.append((f"{PREFIX}/clamped", [name, osc_args.scalar(applied), osc_args.scalar(asked)]))

    def _send(self, client: Any, address: str, *args: Any) -> None:
        """A reply to one sender, from the server's socket."""
        send(self._server.socket, client, address, args, self._count)

    def _record_start(self, client: Any, message: Message, replies: _Replies) -> None:
        if osc_args.released(message):
            return
        name = osc_args.take_name(message)  # checked here: a bad argument is refused with the datagram's reply
        self._later(client, "record/start", lambda: self._surface.start_recording(name, live=True))

    def _save_preset(self, client: Any, message: Message, replies: _Replies) -> None:
        """preset/save s [morph_s] -> preset/saved s; the name is saved from the values applied now."""
        if not message.args or message.tags[0] != "s" or len(message.args) > 2 or message.tags[1:] not in ("", *NUMBER):
            raise BadType(f"preset/save needs a name and optionally seconds, got OSC types {message.tags!r}")
        preset = bank_of(self._presets).save(*message.args)
        replies.out.append((f"{PREFIX}/preset/saved", [preset.name]))

    def _later(self, client: Any, command: str, action: Callable[[], Any]) -> None:
        """Run record/start or record/stop on the session's takes thread; then answer record/started or
        record/stopped s (the path), or /musicsteer/error (counted as `refused_take`)."""
        def done(path: Any, error: str | None) -> None:
            if error is not None:
                self._control.report("refused_take")
            address, args = (f"{PREFIX}/{TAKE_REPLIES[command]}", [str(path or "")]) if error is None else \
                (f"{PREFIX}/error", [one_line(f"{PREFIX}/{command}: {error}", 300)])
            self.broadcaster.put(Reply(client, address, args))
        self._surface.recordings.later(action, done, command.removeprefix("record/"), client[0])

    @property
    def subscription_seconds(self) -> float:
        """How long a subscriber lasts after the last datagram it sent (osc_subscribers.py)."""
        return self._subscribers.seconds

    @subscription_seconds.setter
    def subscription_seconds(self, seconds: float) -> None:
        self._subscribers.seconds = float(seconds)

    @property
    def subscribers(self) -> list[Any]:
        """The (host, port) of every subscriber held now, least recently heard first."""
        return list(self._subscribers)

    def _subscribe(self, on: bool, client: Any) -> None:
        if not on:
            self._subscribers.remove(client)
            return
        if self._subscribers.add(client):
            self.broadcaster.put(client)  # a status at once, so the subscriber's widgets start in sync

    def _status_request(self, client: Any, message: Message, replies: _Replies) -> None:
        """/musicsteer/status -> /musicsteer/status key value …, within a budget shared by all senders: the reply
        is ~30 times the request, to whatever sender the datagram claims (forged: an amplifier)."""
        if not self._status_replies.take():
            self._count("errors", "busy")  # unanswered: an error reply would amplify too
            self._control.report("busy")
            return
        replies.out.append((f"{PREFIX}/status", self.broadcaster.status_args()))


class _Replies:
    """What one datagram's handling answers: queued replies, and its refusals (count, first reason)."""

    def __init__(self) -> None:
        self.out: list[tuple[str, list[Any]]] = []
        self.refused = 0
        self.first = ""


__all__ = ["ADDRESSES", "RATE", "OscServer"]
