"""MIDI feedback: the engine's values go back to a controller's output (LED rings, motor faders, lights).

Derived from the same mappings as the input (controllers/midi.py), so a surface shows what its own
controls would send:
  knob (KnobMapping):   control_change on its cc and channel, value round(knob_position(value)): the
                        input's curve run backwards, so an LED ring or motor fader lands where the knob
                        would send that value. A crossfade shows target/(source+target) of the mix, and
                        nothing while the mix holds other vectors; morph_seconds knobs show nothing (the
                        mapper's own setting, not the engine's).
  steer/morph trigger:  a light, 127 when the mix equals its target (weights normalised, 1e-6), else 0.
  preset trigger:       lit when the mix and alpha equal the preset's.
A light is a note_on (velocity 0 when off: many controllers ignore note_off) for note mappings and a
control_change for button CC mappings. A mapping with channel None (any channel) answers on channel 1.

Values are the ones changes were *set to* (controllers/feedback.py, shared by every surface): a glide
shows its target at once. A message goes out only when its value differs from the last one sent on
that (type, channel, number) — the initial full state excepted — so the port is never flooded.

Soft takeover needs nothing from here: a motor fader that moves to the engine's value is at the
pickup point, so the knob follows at once when it is next touched.

Threads: `on_event` runs on the generation thread and only enqueues; one sender thread owns the port.

An output that goes away (the controller unplugged) is noticed by controllers/midi_ports.PortWatch,
told to the performer (`notify`, "error"), and nothing is sent meanwhile; when a port of the same name
returns it is reopened, told ("warning"), and the full state is sent again: the lights show the engine's
values at once.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import mido

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Applied, Event

from .feedback import applied_values
from .mappings import KnobMapping, Preset, TriggerMapping
from .midi import knob_target
from .midi_ports import PortWatch, open_midi_output, resolve_midi_port

ON, OFF = 127, 0
TOLERANCE = 1e-6  # mixes and alphas closer than this are the same (a mix read back through a glide's end)
QUEUE = 256  # updates waiting for the sender; past this they are dropped, counted, and a resync follows
Key = tuple[str, int, int]  # (mido message type, channel 0..15, cc or note number)


def feedback_state(mappings: Iterable[KnobMapping | TriggerMapping], presets: dict[str, Preset],
                   values: dict[str, Any]) -> dict[Key, int]:
    """What the surface should show for `values` ({param: plain value}, see controllers/feedback.py):
    {(type, channel 0-15, number): 0..127}. Parameters missing from `values` show nothing. Two
    lights on one button: lit if either is; otherwise, two mappings on one number: the later wins."""
    out: dict[Key, int] = {}
    lights: set[Key] = set()
    for m in mappings:
        channel = (m.channel or 1) - 1  # configs count from 1, mido from 0
        if isinstance(m, KnobMapping):
            if m.param == "morph_seconds":
                continue
            param = "mix" if m.param == "crossfade" else m.param
            value = values.get(param)
            if param == "layer":  # several layers: the knob moves (and shows) the first
                value = value[0] if value else None
            position = knob_target(m, value)
            if position is not None:
                out[("control_change", channel, m.cc)] = round(position)
        else:
            lit = ON if _lit(m, presets, values) else OFF
            key = ("note_on", channel, m.note) if m.note is not None else ("control_change", channel, int(m.cc or 0))
            out[key] = max(lit, out[key]) if key in lights else lit
            lights.add(key)
    return out


def _lit(m: TriggerMapping, presets: dict[str, Preset], values: dict[str, Any]) -> bool:
    mix = values.get("mix")
    if m.action != "preset":
        return isinstance(m.target, dict) and same_mix(mix, m.target)
    preset = presets.get(str(m.target))
    alpha = values.get("alpha")
    return (preset is not None and same_mix(mix, preset.mix) and isinstance(alpha, int | float)
            and abs(alpha - preset.alpha) <= TOLERANCE)


def same_mix(a: Any, b: Any) -> bool:
    """Whether two mixes steer the same way: weights divided by their absolute sum (a mix scaled by a
    positive factor is the same direction, engine/vectors.py) agree within TOLERANCE."""
    na, nb = _normalised(a), _normalised(b)
    if not na or not nb:
        return False  # no mix (or none yet): no trigger is lit
    return all(abs(na.get(k, 0.0) - nb.get(k, 0.0)) <= TOLERANCE for k in na.keys() | nb.keys())


def _normalised(mix: Any) -> dict[str, float]:
    if not isinstance(mix, dict):
        return {}
    total = sum(abs(float(w)) for w in mix.values())
    return {k: float(w) / total for k, w in mix.items()} if total > 0 else {}


def message(key: Key, value: int) -> mido.Message:
    kind, channel, number = key
    if kind == "note_on":
        return mido.Message("note_on", channel=channel, note=number, velocity=value)
    return mido.Message("control_change", channel=channel, control=number, value=value)


class MidiFeedback:
    """Sends the engine's values to a MIDI output, from the same mappings as the input.

    mappings, presets: as for MidiMapper (the `midi:` and `presets:` sections of a session config).
    port: an output's index, exact name or a unique part of one; api: None, "alsa" or "jack".
    values: returns the present {param: plain value}, e.g.
        `lambda: current_values(session.control.values)` (controllers/feedback.py); read at start and
        after updates were dropped, on the sender thread.
    notify(level, text): tells the performer when the output goes away ("error") and is reopened ("warning").
    Counters: sent (messages), dropped (updates lost to a full queue), errors (sends or reads that
    failed; the last one is kept in `last_error`), reconnects. Nothing here raises into the engine.
    """

    def __init__(self, mappings: Iterable[KnobMapping | TriggerMapping], presets: dict[str, Preset] | None,
                 port: str | int, api: str | None, values: Callable[[], dict[str, Any]],
                 queue_size: int = QUEUE, notify: Callable[[str, str], None] | None = None) -> None:
        self.mappings = tuple(mappings)
        self.presets = dict(presets or {})
        self.spec, self.api, self.values = port, api, values
        self.port_name: str | None = None
        self.sent = self.dropped = self.errors = self.reconnects = 0
        self.last_error = ""
        self.notify = notify or (lambda level, text: None)
        self.connected = False
        self._returned: str | None = None  # the name a returned port has now: the sender thread reopens it
        self._watch: Any = None
        # Only these parameters change what is shown: other changes (prompt, seed…) are not queued.
        self._params = {"mix", "alpha"} | {"mix" if m.param == "crossfade" else m.param
                                           for m in self.mappings if isinstance(m, KnobMapping)}
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(queue_size)
        self._resync = False  # an update was dropped: re-read every value before showing the next
        self._shown: dict[str, Any] = {}  # {param: value} the surface is showing (sender thread only)
        self._last: dict[Key, int] = {}  # last value sent per (type, channel, number) (sender thread only)
        self._port: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- any thread -------------------------------------------------------------------------------
    def start(self) -> str:
        """Open the output (a one-line MusicsteerError if it is unknown, ambiguous or cannot be opened),
        start the sender thread, which first sends the full present state; returns the port's full name."""
        if self._thread is not None:
            raise MusicsteerError("MIDI feedback is already started")
        name = resolve_midi_port(self.spec, self.api, direction="output")
        self._port = open_midi_output(name, self.api)
        self.port_name, self.connected = name, True
        self._watch = PortWatch(name, "output", self.api, self._lost, self._back)
        self._watch.start()  # (before anything is sent: see PortWatch.start)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="midi-feedback", daemon=True)
        self._thread.start()
        return name

    def stop(self, timeout: float = 2.0) -> None:
        """End the sender thread (what is still queued is not sent) and close the port. Idempotent."""
        self._stopping.set()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def __enter__(self) -> MidiFeedback:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on_event(self, event: Event) -> None:
        """A `Listeners` callback, on the generation thread: queue what an `Applied` set; never blocks
        or raises (a full queue drops the update, counts it and makes the sender re-read all values)."""
        try:
            if not isinstance(event, Applied):
                return
            update = {p: v for p, v in applied_values(event).items() if p in self._params}
            if update:
                self._queue.put_nowait(update)
        except queue.Full:
            self.dropped += 1
            self._resync = True
        except Exception as exc:  # noqa: BLE001 - a listener must never stop the music
            self._fail(exc)

    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors, "reconnects": self.reconnects}

    def _lost(self) -> None:  # the watch thread: the sender stops sending until the port returns
        self.connected = False
        self.notify("error", f"MIDI output {self.port_name!r} went away: its lights and motor faders show "
                             "nothing until it returns (it reconnects by itself)")

    def _back(self, name: str) -> None:  # the watch thread: the sender thread, which owns the port, reopens it
        self._returned = name

    # -- the sender thread ---------------------------------------------------------------------------
    def plan(self, update: dict[str, Any], full: bool = False) -> list[mido.Message]:
        """Take `update` ({param: value}) as shown and return the messages that bring the surface there:
        those whose value differs from the last sent on their (type, channel, number); all when `full`.
        Records them as sent (a failed send forgets its key, so the next update resends it)."""
        self._shown.update(update)
        out = []
        for key, value in feedback_state(self.mappings, self.presets, self._shown).items():
            if full or self._last.get(key) != value:
                self._last[key] = value
                out.append(message(key, value))
        return out

    def _run(self) -> None:
        self._send(self.plan(self._read(), full=True))  # the lights start in sync with the engine
        while not self._stopping.is_set():
            if self._returned is not None:
                self._reopen(self._returned)
            try:
                update = self._queue.get(timeout=0.1)  # (the timeout bounds how long stop and a reopen wait)
            except queue.Empty:
                continue
            if not self.connected:  # away: what it would show is read again when it returns
                continue
            if self._resync:
                self._resync = False
                while True:  # what is queued is older than the values now; read those instead
                    try:
                        update.update(self._queue.get_nowait())
                    except queue.Empty:
                        break
                update.update(self._read())  # (mid-glide this is the point on the way, not the target)
            self._send(self.plan(update))

    def _reopen(self, name: str) -> None:
        """The sender thread: close the dead port, open the returned one, send the full state again."""
        self._returned = None
        old, self._port = self._port, None
        if old is not None:
            with contextlib.suppress(Exception):  # its peer is gone: closing may fail, and it is gone anyway
                old.close()
        try:
            self._port = open_midi_output(name, self.api)
        except MusicsteerError as exc:
            self._fail(exc)
            if self._watch is not None:
                self._watch.present = False  # tried again at the watch's next look
            return
        self.port_name, self.connected = name, True
        self.reconnects += 1
        self._last.clear()
        self._send(self.plan(self._read(), full=True))  # the surface may show anything after its absence
        self.notify("warning", f"MIDI output {name!r} is back: reconnected")

    def _read(self) -> dict[str, Any]:
        try:
            return dict(self.values())
        except Exception as exc:  # noqa: BLE001 - counted; the surface keeps what it shows
            self._fail(exc)
            return {}

    def _send(self, messages: list[mido.Message]) -> None:
        for msg in messages:
            try:
                self._port.send(msg)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - a port that went away must not end the thread
                self._fail(exc)
                number = msg.note if msg.type == "note_on" else msg.control
                self._last.pop((msg.type, msg.channel, number), None)

    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = str(exc) if isinstance(exc, MusicsteerError) else f"{type(exc).__name__}: {exc}"
