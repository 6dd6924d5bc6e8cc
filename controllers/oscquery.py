"""OSCQuery: the engine's OSC address space described over HTTP and announced with zeroconf (issue 13).

Control surfaces that speak OSCQuery (https://github.com/Vidvox/OSCQueryProposal) find the engine by
zeroconf (`_oscjson._tcp` for this HTTP server, `_osc._udp` for the OSC port) and read its address
space as JSON: `GET /` (everything), `GET /musicsteer/alpha`, `GET /musicsteer/alpha?VALUE`, `GET
/?HOST_INFO`. The address space is derived, never spelled out again: one node per address of
controllers/osc.py's ADDRESSES, typed and ranged from the parameter table's rows (engine/params.py).

Per node: FULL_PATH; TYPE, the OSC type tags every message must carry; ACCESS 3 (read-write) on the
address that holds a control's value, 2 (write-only) on the other ways to set it (steer, morph) and
on the session's commands (record/start, subscribe, …); DESCRIPTION, the row's help; RANGE (MIN/MAX
from the row, VALS = a choice's choices) and CLIPMODE "both" where live values are clamped; VALUE,
read from `values()` on every request (surfaces see the value of this moment, a glide's point on its
way; no listener on the generation thread is needed). HOST_INFO: NAME, OSC_IP, OSC_PORT,
OSC_TRANSPORT "UDP", EXTENSIONS (no LISTEN: there is no websocket, surfaces poll).

Optional arguments: OSCQuery has no notation for them, and a TYPE's tags must match VALUE's entries
one for one, so TYPE is the shortest form the server accepts (alpha "f", mix "sf", morph "sf" = name,
seconds; record/start none) and the optional trailing arguments (alpha's ramp seconds, mix's morph
seconds, record/start's take name) are named in DESCRIPTION as the table writes them ("OSC: f
[ramp_s]"). A repeated form (mix "s f …", layers) takes as many repeats as the value holds now:
TYPE "sfsf" with VALUE ["jazz", 0.5, "rock", 0.5]; with no value, one repeat of nulls.

Built on python-oscquery's data model and HTTP server (OSCAddressSpace, OSCPathNode,
OSCQueryHTTPServer/Handler), wrapped because its OSCQueryService binds every interface (not the OSC
host), advertises port 0 when asked for any free port, blocks start-up ~1.7 s per zeroconf service
(measured), holds itself in atexit and never closes its socket, and its nodes hold fixed values.

Security: the HTTP server (controllers/oscquery_http.py: GET only, every request bounded in time, in
number and per host) listens on the host given, which the CLI makes the OSC host: whoever can reach it
can already steer over OSC. It tells only what OSC replies tell.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

import ifaddr
from pythonoscquery.shared.osc_access import OSCAccess
from pythonoscquery.shared.osc_address_space import OSCAddressSpace
from pythonoscquery.shared.osc_host_info import OSCHostInfo
from pythonoscquery.shared.osc_path_node import OSCNodeEncoder, OSCPathNode
from pythonoscquery.shared.oscquery_spec import OSCQueryAttribute as A
from zeroconf import InterfaceChoice, ServiceInfo, Zeroconf

from musicsteer.engine.errors import MusicsteerError, one_line
from musicsteer.engine.params import GLIDE, OSC_ADDRESSES, PARAMS, Param, check_text

from .addresses import BAD_ADDRESS, bind_error
from .osc import ADDRESSES, PREFIX, SESSION_COMMANDS
from .osc_subscribers import SUBSCRIPTION_SECONDS
from .oscquery_http import POLL_SECONDS, HTTPServer

# The session's own commands (controllers/osc.py): the arguments each takes, written as the parameter
# table writes them ([…] optional, a word such as morph_s: seconds), and what it does.
COMMANDS = {
    "record/start": ("[s]", "start a take (named, or new; a button release, 0, is ignored); replies record/started s"),
    "record/stop": ("", "stop the take; replies record/stopped s (the file)"),
    "preset": ("s", "recall a preset by name"),
    "preset/save": ("s [morph_s]", "save the values applied now as a preset; replies preset/saved s"),
    "subscribe": ("", "send this sender status, every applied value, meter, error and warning messages, for "
                      f"{SUBSCRIPTION_SECONDS:g} s after the last message it sent (renew: subscribe or ping)"),
    "unsubscribe": ("", "stop sending this sender status and changes"),
    "ping": ("[any …]", "replies pong with the same arguments"),
    "status": ("", "replies /musicsteer/status: key/value pairs, mix last"),
}
_TAGS = {"i": int, "h": int, "f": float, "d": float, "s": str}  # what the OSC server accepts, as Python types
_UNSPECIFIED = ("", "0.0.0.0", "::")
_EXTENSIONS = {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "CLIPMODE": True,
               "TAGS": False, "UNIT": False, "CRITICAL": False, "LISTEN": False, "PATH_CHANGED": False}


class _Node(OSCPathNode):
    """A node whose JSON also carries CLIPMODE (the library's attribute enum has no member for it)."""

    def __init__(self, path: str, access: OSCAccess = OSCAccess.NO_VALUE, description: str | None = None) -> None:
        super().__init__(path, description=description)  # (the library insists on a value for access > 0)
        self.attributes[A.ACCESS], self.clipmode = access, None

    def to_json(self, attribute: A | None = None) -> str:
        return json.dumps(self, cls=_Encoder, attribute_filter=attribute)


class _Encoder(OSCNodeEncoder):
    def default(self, o: Any) -> Any:
        out = super().default(o)
        if isinstance(o, _Node) and o.clipmode and self.attribute_filter is None:
            out["CLIPMODE"] = o.clipmode
        return out


def arguments(form: str, row: Param | None = None) -> tuple[list[tuple[str, dict | None]], bool]:
    """(the required arguments of an OSC form as (type tag, RANGE entry), whether they repeat). A form
    is written as the parameter table's osc_types: tags, `[…]` optional from there on, `…` repeats, a
    word (ramp_s, morph_s) a glide time in seconds, an f. `row` ranges the form's own tags."""
    args: list[tuple[str, dict | None]] = []
    for word in form.split():
        if word.startswith("["):
            break
        if word in _TAGS:
            ranged = row is not None and (word != "s" or row.kind == "choice")  # (a mix's s: a vector name)
            args.append((word, None if not ranged else {"VALS": list(row.choices)} if row.kind == "choice"
                         else {"MIN": row.low, "MAX": row.high}))
        elif word != "…":
            args.append(("f", {"MIN": GLIDE.low, "MAX": GLIDE.high}))
    return args, "…" in form or (row is not None and row.many)


def form_of(row: Param, address: str) -> str:
    """The OSC form of one of a row's addresses: osc_types holds one per address, split by `|`."""
    forms = [form.strip() for form in row.osc_types.split("|")]
    return forms[row.osc.index(address)] if len(forms) == len(row.osc) else forms[0]


def _value_list(value: Any) -> list[Any]:
    """A control's value as VALUE entries: a mix as name/weight pairs, layers as a list; none: []."""
    if isinstance(value, dict):
        return [x for pair in value.items() for x in pair]
    if isinstance(value, list | tuple):
        return list(value)
    return [] if value is None else [value]


def _ips(host: str) -> list[str]:
    """The addresses to advertise for a server listening on `host`: the host itself, or every address
    of this machine but loopback when it listens on all of them (0.0.0.0)."""
    if host in _UNSPECIFIED:
        return [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
                if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback]
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    return [socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]]  # a name such as localhost


class OscQueryService:
    """An OSCQuery HTTP server for the OSC server at `osc_address`, announced with zeroconf.

    osc_address: (host, port) where the engine's OSC UDP server listens (controllers/osc.py's
    OscServer.address). http_host/http_port: where to serve (port 0 = any free port; the CLI passes
    the OSC host). values: returns {param: value} now, called on the HTTP threads once per request,
    so it must be thread-safe (controllers/feedback.current_values of the session's Controls is).
    name: the service name and HOST_INFO NAME (≤ 63 characters). advertise: register zeroconf.
    Raises a one-line MusicsteerError for a port outside 0..65535 or a name that is not one line of text."""

    def __init__(self, osc_address: tuple[str, int], http_host: str, http_port: int,
                 values: Callable[[], dict[str, Any]], name: str = "musicsteer", advertise: bool = True) -> None:
        self.osc_address = (str(osc_address[0]), PARAMS["osc_port"].check(osc_address[1])[0])
        self.http_host, self.http_port = str(http_host), PARAMS["osc_port"].named("OSCQuery port").check(http_port)[0]
        self.name = check_text("the OSCQuery name", name, 63, empty=False)
        self.advertise, self._values = advertise, values
        self.errors = 0  # requests that failed or were cut (broken, past a deadline, displaced: oscquery_http.py)
        # python-oscquery logs one ERROR line per request it cannot answer (`?BOGUS`): a poller, or anyone
        # who reaches the port, must not fill stderr; the 400 answer says it to the client.
        logging.getLogger("pythonoscquery.osc_query_service").setLevel(logging.CRITICAL)
        self.advertise_error: str | None = None  # why zeroconf could not announce (the HTTP server still runs)
        self.announced: list[str] = []  # the zeroconf names registered ("musicsteer-2._osc…": the name was taken)
        self.space = OSCAddressSpace()
        self._nodes = self._build()
        osc_ip = None if self.osc_address[0] in _UNSPECIFIED else self.osc_address[0]  # no OSC_IP: the HTTP host
        self.host_info = OSCHostInfo(self.name, _EXTENSIONS, osc_ip, self.osc_address[1], "UDP")
        self._server: HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._zeroconf: Zeroconf | None = None  # set by the announcing thread
        self._lock, self._stopping, self._stopped = threading.Lock(), False, False

    def _build(self) -> list[tuple[_Node, Param, str]]:
        """The address space in osc.ADDRESSES's order, parents first: a node per address, a plain
        container where a path has none (/musicsteer/record); /musicsteer/preset is both."""
        nodes: dict[str, _Node] = {}
        readable = []
        for address, row in OSC_ADDRESSES.items():
            form = form_of(row, address)
            args, repeats = arguments(form, row)
            holds = address == row.osc[0]  # the row's first address takes (and is told) its whole value
            form += " …" if repeats and "…" not in form else ""  # layers: 1 to row.size of them
            more = "" if form.replace(" ", "") == "".join(t for t, _ in args) else f"; OSC: {form}"
            where = "" if holds else f"; write-only, the value is at {PREFIX}/{row.osc[0]}"
            node = nodes[f"{PREFIX}/{address}"] = _Node(
                f"{PREFIX}/{address}", OSCAccess.READWRITE_VALUE if holds else OSCAccess.WRITEONLY_VALUE,
                f"{row.help}{more}{where}")
            self._set(node, args, [None] * len(args) if holds else None)
            readable += [(node, row, form_of(row, address))] if holds else []
        for command in SESSION_COMMANDS:
            form, help_ = COMMANDS.get(command, ("", ""))  # (tests/test_oscquery.py checks every one is here)
            node = nodes[f"{PREFIX}/{command}"] = _Node(f"{PREFIX}/{command}", OSCAccess.WRITEONLY_VALUE,
                                                        f"{help_}; OSC: {form}" if form else help_)
            self._set(node, arguments(form)[0], None)
        assert tuple(nodes) == ADDRESSES  # one address space, one definition
        self.space._root = _Node("/", description="root node")  # (so every node renders with CLIPMODE)
        for path in sorted({p.rsplit("/", 1)[0] for p in nodes} - {""} - set(nodes), key=len):
            self.space.add_node(_Node(path))
        for path in sorted(nodes, key=lambda p: p.count("/")):  # (stable: same depth, ADDRESSES's order)
            self.space.add_node(nodes[path])
        return readable

    @staticmethod
    def _set(node: _Node, args: list[tuple[str, dict | None]], value: list[Any] | None) -> None:
        ranges = [r for _, r in args]
        node.attributes[A.TYPE] = [_TAGS[tag] for tag, _ in args] or None  # (no arguments: no TYPE)
        node.attributes[A.RANGE] = ranges if any(ranges) else None
        # live numbers out of range are clamped, not refused (engine/params.py): OSCQuery's CLIPMODE both
        node.clipmode = ["both" if r and "MIN" in r else "none" for r in ranges] if any(ranges) else None
        node.attributes[A.VALUE] = value

    def refresh(self) -> None:
        """Read values() and set every readable node's VALUE (and, for repeated forms, TYPE) to it."""
        values = self._values()
        with self.space.lock:
            for node, row, form in self._nodes:
                args, repeats = arguments(form, row)
                value = _value_list(values.get(row.name))
                if repeats:  # one repeat per value entry (mix: per pair), or one of nulls
                    args = args * max(1, len(value) // len(args))
                self._set(node, args, value + [None] * (len(args) - len(value)))

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the HTTP server is bound to (after start())."""
        if self._server is None:
            raise MusicsteerError("the OSCQuery server is not started")
        return tuple(self._server.server_address[:2])  # type: ignore[return-value]

    def start(self) -> None:
        """Bind and serve HTTP on a thread, then register zeroconf on another (probing takes seconds; the
        HTTP server answers meanwhile). Raises a one-line MusicsteerError when the port cannot be bound."""
        if self._server is not None or self._stopping:
            return
        host, port = self.http_host, self.http_port
        try:
            self._server = HTTPServer(self, (host, port))
        except BAD_ADDRESS as exc:
            raise bind_error(exc, "OSCQuery", host, port) from None
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": POLL_SECONDS},
                                          name="musicsteer-oscquery", daemon=True)]
        if self.advertise:
            self._threads.append(threading.Thread(target=self._announce, name="musicsteer-zeroconf", daemon=True))
        for thread in self._threads:
            thread.start()

    def _announce(self) -> None:
        try:
            http_ips, osc_ips = _ips(self.http_host), _ips(self.osc_address[0])
            specific = self.http_host not in _UNSPECIFIED and ":" not in http_ips[0]
            zc = Zeroconf(interfaces=http_ips if specific else InterfaceChoice.All)
            with self._lock:
                if self._stopping:  # stop() came first: close here, nobody else will
                    zc.close()
                    return
                self._zeroconf = zc
            host = re.sub(r"[^A-Za-z0-9-]+", "-", f"{self.name}-{socket.gethostname()}")[:63].strip("-")
            for kind, port, ips in (("_oscjson._tcp", self.address[1], http_ips), ("_osc._udp", self.osc_address[1],
                                                                                   osc_ips)):
                if self._stopping:
                    return
                info = ServiceInfo(f"{kind}.local.", f"{self.name}.{kind}.local.", port=port,
                                   properties={"txtvers": "1"}, server=f"{host}.local.", parsed_addresses=ips)
                zc.register_service(info, allow_name_change=True)  # a name taken on the network: "NAME-2"
                self.announced.append(info.name)
        except Exception as exc:  # noqa: BLE001 - no multicast, no interface: OSCQuery still answers on HTTP
            self.advertise_error = one_line(f"zeroconf: {type(exc).__name__}: {exc}", 200)

    def stop(self) -> None:
        """Unregister zeroconf (goodbye packets), stop serving and close the socket; joins every thread this
        service started (HTTP clients still connected are cut). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopping = self._stopped = True
        if self._server is not None:
            self._server.shutdown()  # the serve thread returns; zeroconf may still be probing
        for thread in self._threads:
            thread.join(timeout=10)
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):  # a network gone away must not stop the shutdown
                self._zeroconf.unregister_all_services()
            self._zeroconf.close()
            self._zeroconf = None
        if self._server is not None:
            self._server.cut_all()  # clients still connected (a slow one) end now: nothing to wait for
            self._server.server_close()  # also joins request threads (block_on_close)

    def __enter__(self) -> OscQueryService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["COMMANDS", "OscQueryService", "arguments", "form_of"]
