"""MIDI ports through mido's rtmidi backend: listed, named, opened, and watched for going away (issue 28).

Listing, resolving a spec (an index, a name, part of one) and opening are one-line MusicsteerErrors
when they fail (a backend that cannot load, no ALSA sequencer, an unknown or ambiguous name).

Nothing in rtmidi reports an unplugged controller: over JACK the input simply hears nothing more
(measured: no error callback fires, the open port stays "open"), over ALSA the same. What does change
is the list of ports, read from one rtmidi client of our own in well under a millisecond. `PortWatch`
reads it every POLL_SECONDS on a thread of its own and calls `lost()` once when the port's name leaves
the list, then `back(name)` once a port of the same name returns (ALSA's client:port numbers, which a
replugged device may not get again, are not part of the name compared: see `same_port`). A port that
left and came back between two looks is in both lists, yet the owner's connection to it is dead: so the
watch also compares the port's identity, its full name (ALSA's numbers included) and, over JACK, how many
times a port of that name was registered (controllers/jack_ports.py); a changed identity is told as a
loss and a return at once, and the owner reconnects. What to do
then (close the dead port, reopen, resend the lights, tell the performer) is the owner's: MidiInput and
MidiFeedback (controllers/midi.py, midi_feedback.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import mido

from musicsteer.engine.errors import MusicsteerError, one_line

POLL_SECONDS = 0.25  # how soon a port's loss or return is noticed
_RTMIDI_APIS = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK"}
_ALSA_NUMBERS = re.compile(r" \d+:\d+$")  # "nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0": the client:port numbers


def same_port(a: str, b: str) -> bool:
    """Whether two port names name the same device: equal but for ALSA's trailing client:port numbers."""
    return _ALSA_NUMBERS.sub("", a) == _ALSA_NUMBERS.sub("", b)


class PortWatch:
    """Watches port `name` (a full name, as resolve_midi_port gives) among the MIDI ports of `direction`
    ("input": ports a controller sends from; "output": ports that take feedback) under `api` (None,
    "alsa", "jack"). lost(): the port left the list; back(name): a port of the same name is there again
    (its full name now). Both run on the watch thread and must not raise (what they raise is kept in
    `last_error`). `start()` begins watching; `stop()` ends the thread."""

    def __init__(self, name: str, direction: str, api: str | None, lost: Callable[[], None],
                 back: Callable[[str], None], interval: float = POLL_SECONDS) -> None:
        self.name, self.direction, self.api = name, direction, api
        self._lost, self._back, self.interval = lost, back, interval
        self.present = True  # the port was there when it was opened
        self.last_error = ""
        self._seen: tuple[str, int] | None = None  # the port's identity at the last look (None: not there, or
        # not compared yet: the first look, and the one after a return, only take it)
        self._registrations: Any = None  # over JACK: jack_ports.Registrations, made by start()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Make the listing client here and now (a new JACK client reorders the graph: done before the
        owner sends anything, it cannot disturb the owner's first messages), then watch on a thread."""
        self._stop.clear()
        client = self._client()
        if client is None:
            return
        if self.api == "jack":
            try:
                from .jack_ports import Registrations

                self._registrations = Registrations()
            except (OSError, RuntimeError) as exc:  # watched by name only: a replug within one look is missed
                self.last_error = one_line(f"cannot watch JACK port registrations: {exc}", 200)
        self._thread = threading.Thread(target=self._run, args=(client,), name=f"midi-watch-{self.direction}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        registrations, self._registrations = self._registrations, None
        if registrations is not None:
            registrations.close()

    def _run(self, client: Any) -> None:
        """Look every `interval` until stopped. A listing that fails (a busy or restarting JACK server) is kept
        in last_error and the listing client made anew: one failed look must not end the watch for the set."""
        try:
            while not self._stop.wait(self.interval):
                if client is None:
                    client = self._client()  # None again: try at the next look
                    continue
                try:
                    names = client.get_ports()
                except Exception as exc:  # noqa: BLE001 - the backend failed: say why, make a new client
                    self.last_error = one_line(f"{type(exc).__name__}: {exc}", 200)
                    with contextlib.suppress(Exception):
                        client.delete()
                    client = None
                    continue
                self.poll(names)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.delete()

    def poll(self, names: list[str]) -> None:
        """One look at the port list `names`: call lost() or back(name) when the port's presence changed,
        both when it is there under another identity (it left and came back since the last look)."""
        seen, self._seen = self._seen, self._identity(names)
        found = self._seen and self._seen[0]
        try:
            if self.present and (found is None or (seen is not None and self._seen != seen)):
                self.present = False
                self._lost()
            if not self.present and found is not None:
                self.present = True
                self._seen = None  # the next look's identity is the one compared (its registration may be told late)
                self._back(found)
        except Exception as exc:  # noqa: BLE001 - the owner's failure is kept; the watch goes on
            self.last_error = one_line(f"{type(exc).__name__}: {exc}", 200)

    def _identity(self, names: list[str]) -> tuple[str, int] | None:
        """The port's identity in `names`: its full name and its JACK registrations so far; None: not there."""
        found = next((n for n in names if same_port(n, self.name)), None)
        if found is None:
            return None
        return found, self._registrations.count(found) if self._registrations is not None else 0

    def _client(self) -> Any:
        """One rtmidi client of our own that only lists ports (None: the backend cannot make one; said in
        last_error, and the port is simply not watched)."""
        try:
            import rtmidi

            api = getattr(rtmidi, f"API_{_RTMIDI_APIS[self.api]}") if self.api else rtmidi.API_UNSPECIFIED
            kind = rtmidi.MidiIn if self.direction == "input" else rtmidi.MidiOut
            return kind(api, name="musicsteer-watch")
        except Exception as exc:  # noqa: BLE001 - ImportError, SystemError (no ALSA sequencer, no JACK)
            self.last_error = one_line(f"cannot watch MIDI ports: {type(exc).__name__}: {exc}", 200)
            return None


def _backend(api: str | None) -> mido.Backend:
    """mido's rtmidi backend, loaded; a python-rtmidi that cannot load (its system library, libasound.so.2
    on Linux, missing: ImportError or OSError from the import inside mido) is a one-line MusicsteerError."""
    if api is not None and api not in _RTMIDI_APIS:
        raise MusicsteerError(f"unknown MIDI API {api!r} (known: {', '.join(_RTMIDI_APIS)})")
    try:
        return mido.Backend("mido.backends.rtmidi" + (f"/{_RTMIDI_APIS[api]}" if api else ""), load=True)
    except (ImportError, OSError) as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "rtmidi":
            fix = "pip install python-rtmidi"
        else:
            fix = "install libasound2 (Debian/Ubuntu: apt-get install libasound2), or reinstall python-rtmidi"
        raise MusicsteerError(f"cannot load the MIDI backend (python-rtmidi): {one_line(exc)}; {fix}") from None


def list_midi_inputs(api: str | None = None) -> list[str]:
    """Names of the MIDI inputs rtmidi sees (api: None for its default, "alsa" or "jack")."""
    return _list_ports("input", api)


def list_midi_outputs(api: str | None = None) -> list[str]:
    """Names of the MIDI outputs rtmidi sees (where feedback can go: LED rings, motor faders)."""
    return _list_ports("output", api)


def _list_ports(direction: str, api: str | None) -> list[str]:
    backend = _backend(api)  # a backend that cannot load says so itself
    try:
        names = backend.get_input_names() if direction == "input" else backend.get_output_names()
        return list(dict.fromkeys(names))
    except (OSError, SystemError, RuntimeError) as exc:
        hint = ""
        if api in (None, "alsa") and not os.path.exists("/dev/snd/seq"):
            hint = " (no /dev/snd/seq: this system has no ALSA sequencer; try api jack with a JACK server)"
        raise MusicsteerError(f"cannot list MIDI {direction}s: {one_line(exc)}{hint}") from None


def open_midi_input(name: str, callback: Callable[[mido.Message], None], api: str | None = None) -> Any:
    """Open input `name` (a full name, see resolve_midi_port) with `callback` on mido's thread."""
    backend = _backend(api)
    try:
        return backend.open_input(name, callback=callback)
    except (OSError, SystemError, RuntimeError, ValueError) as exc:
        raise MusicsteerError(f"cannot open MIDI input {name!r}: {one_line(exc)}") from None


def open_midi_output(name: str, api: str | None = None) -> Any:
    """Open output `name` (a full name, see resolve_midi_port with direction="output"); a mido port."""
    backend = _backend(api)
    try:
        return backend.open_output(name)
    except (OSError, SystemError, RuntimeError, ValueError) as exc:
        raise MusicsteerError(f"cannot open MIDI output {name!r}: {one_line(exc)}") from None


def resolve_midi_port(spec: str | int, api: str | None = None, inputs: list[str] | None = None,
                      direction: str = "input") -> str:
    """The full name of the port `spec` names: an index, an exact name, or part of exactly one name.

    direction: "input" (a controller's knobs) or "output" (its lights); `inputs`: the names to choose
    among (of that direction, despite the name), listed from rtmidi when None. Errors are one line."""
    if inputs is None:
        names = list_midi_inputs(api) if direction == "input" else list_midi_outputs(api)
    else:
        names = list(inputs)
    what = f"MIDI {direction}"
    available = "; available: " + ", ".join(f"{i} {n!r}" for i, n in enumerate(names)) if names else f": no {what}s"
    if isinstance(spec, int) or str(spec).strip().isdigit():
        index = int(spec)
        if 0 <= index < len(names):
            return names[index]
        raise MusicsteerError(f"no {what} with index {index}{available}")
    if spec in names:
        return spec
    matches = [n for n in names if spec.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise MusicsteerError(f"{what} {spec!r} matches {len(matches)} {direction}s ({', '.join(map(repr, matches))}); "
                              "give more of the name or an index")
    raise MusicsteerError(f"unknown {what} {spec!r}{available}")


__all__ = ["POLL_SECONDS", "PortWatch", "list_midi_inputs", "list_midi_outputs", "open_midi_input", "open_midi_output",
           "resolve_midi_port", "same_port"]
