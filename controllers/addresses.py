"""Network addresses as the controllers take them: `[HOST:]PORT` flags, whether a host stays on this
machine, and the one-line error for a port that cannot be bound (OSC, the web page, OSCQuery)."""

from __future__ import annotations

import errno
import ipaddress
import socket

from musicsteer.engine.errors import MusicsteerError, one_line
from musicsteer.engine.params import PARAMS

# What the socket layer raises for a host or port it cannot use: a refused bind (OSError), a port
# past 65535 (OverflowError), a name idna cannot encode (UnicodeError), a NUL in it (ValueError/TypeError).
BAD_ADDRESS = (OSError, OverflowError, UnicodeError, ValueError, TypeError)
_BIND = {errno.EADDRINUSE: "{what} port {port} on {host} is in use",
         errno.EADDRNOTAVAIL: "{what} host {host} is not an address of this machine",
         errno.EACCES: "{what} port {port} on {host}: permission denied"}


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def host_port(text: str, flag: str, host: str = "127.0.0.1") -> tuple[str, int]:
    """`[HOST:]PORT` (IPv6 as `[::1]:PORT`) -> (host, port); the port is checked like --osc-port (0..65535,
    0 = any free port). MusicsteerError, one line naming `flag`, otherwise."""
    head, colon, tail = text.strip().rpartition(":")
    if tail.endswith("]"):  # [::1] alone: the port is missing, not "1]"
        raise MusicsteerError(f"{flag} {one_line(text, 60)!r}: give [IPv6]:PORT or PORT")
    if colon and not head:
        raise MusicsteerError(f"{flag} {one_line(text, 60)!r}: give HOST:PORT or PORT")
    port = PARAMS["osc_port"].named(f"{flag}'s port").parse(tail)
    return (head.strip("[]") if colon else host), port


def bind_error(exc: BaseException, what: str, host: object, port: object) -> MusicsteerError:
    """The one line for a socket of `what` ("OSC", "web", "OSCQuery") that could not listen on host:port."""
    template = _BIND.get(getattr(exc, "errno", None), "{what} cannot listen on {host}:{port}: {why}")
    return MusicsteerError(template.format(what=what, host=one_line(host, 60), port=port,
                                           why=one_line(getattr(exc, "strerror", None) or exc, 120)))


def local_addresses() -> set[str]:
    """Every IP address of this machine's interfaces (ifaddr: zeroconf's own dependency)."""
    import ifaddr

    return {ip.ip if isinstance(ip.ip, str) else ip.ip[0] for adapter in ifaddr.get_adapters() for ip in adapter.ips}


def udp_target(host: str, port: int, own: tuple[str, int], what: str) -> tuple[str, int]:
    """(host, port) resolved to the (ip, port) an IPv4 UDP sendto needs; never `own`, the sending server's
    address (every echo would come back to it as a change). MusicsteerError, one line naming `what`."""
    try:
        ip, port = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4][:2]
    except BAD_ADDRESS as exc:
        why = getattr(exc, "strerror", None) or exc
        raise MusicsteerError(f"{what} {one_line(host, 60)}:{port}: {one_line(why, 80)}") from None
    if port == own[1] and (ip == own[0] or ipaddress.ip_address(ip).is_loopback
                           or own[0] in ("0.0.0.0", "::") and ip in local_addresses()):
        raise MusicsteerError(f"{what} {ip}:{port} is this server's own address: every echo would come back as "
                              "a change")
    return ip, port


__all__ = ["BAD_ADDRESS", "bind_error", "host_port", "is_loopback", "udp_target"]
