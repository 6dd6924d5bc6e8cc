"""JACK port registrations, counted per port name: what tells a port that came back from one that never left.

A JACK port unregistered and registered again under the same name (a controller's bridge restarted, a
device unplugged and plugged back) between two looks at the port list is not seen in the list; its old
connections are gone all the same. JACK's own port ids do not tell either: jack2 gives the new port the
lowest free slot, so its uuid is usually the old one's (measured on jackd 1.9: unregister, register
again: the same uuid). What JACK does tell is each registration, to any client that asks: one client of
our own (libjack through ctypes: python-rtmidi exposes none of this) counts them per name, and a count
that changed means a new port, whatever the list says.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import threading

_NO_START_SERVER = 0x01  # JackNoStartServer: never start a server behind the performer's back
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)  # (port id, registered, arg)


def _libjack() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
    lib.jack_client_open.restype = ctypes.c_void_p
    lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    lib.jack_set_port_registration_callback.argtypes = [ctypes.c_void_p, _CALLBACK, ctypes.c_void_p]
    lib.jack_port_by_id.restype = ctypes.c_void_p
    lib.jack_port_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.jack_port_name.restype = ctypes.c_char_p
    lib.jack_port_name.argtypes = [ctypes.c_void_p]
    lib.jack_activate.argtypes = [ctypes.c_void_p]
    lib.jack_client_close.argtypes = [ctypes.c_void_p]
    return lib


class Registrations:
    """Registrations of JACK ports seen since this was made, per full port name ("client:port"), on the
    server libjack finds (JACK_DEFAULT_SERVER). Raises OSError when libjack cannot load, RuntimeError when
    no client can be made (no server). `close()` ends the client."""

    def __init__(self, client_name: str = "musicsteer-watch") -> None:
        self._lib = _libjack()
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._client = self._lib.jack_client_open(client_name.encode(), _NO_START_SERVER, None)
        if not self._client:
            raise RuntimeError("cannot open a JACK client (is the JACK server running?)")
        self._callback = _CALLBACK(self._registered)  # kept: JACK calls it until the client closes
        if self._lib.jack_set_port_registration_callback(self._client, self._callback, None) or \
                self._lib.jack_activate(self._client):
            self.close()
            raise RuntimeError("cannot watch JACK port registrations")

    def count(self, name: str) -> int:
        """How many times a port named `name` was registered since this was made."""
        with self._lock:
            return self._counts[name]

    def close(self) -> None:
        client, self._client = self._client, None
        if client:
            self._lib.jack_client_close(client)

    def _registered(self, port_id: int, registered: int, _arg: object) -> None:  # JACK's notification thread
        if not registered or not self._client:
            return
        port = self._lib.jack_port_by_id(self._client, port_id)
        name = self._lib.jack_port_name(port) if port else None
        if name:
            with self._lock:
                self._counts[name.decode(errors="replace")] += 1


__all__ = ["Registrations"]
