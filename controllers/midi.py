"""MIDI input: knobs, faders, pads and buttons of a controller become engine `Change`s.

`MidiMapper` is pure (a `mido.Message` in, a list of `Change`s out) and owns the soft-takeover state;
`MidiInput` opens a port through mido's rtmidi backend and feeds every message from mido's thread
through the mapper to `surface.submit`. Mappings come from the `midi:` section of a session config
(controllers/config.py) or from `musicsteer midi-learn`. The same mappings drive MIDI feedback to an
output (controllers/midi_feedback.py), which reuses the curves and port lookup here.

Curves map a CC value c in 0..127, x = c/127, onto [min, max]:
  linear: v = min + (max - min)·x
  exp:    v = min·(max/min)^x   (min, max > 0; "log" is the same curve). Every CC step multiplies the
          value by the same ratio, so guidance 1..8 gives as much travel from 1 to 2.8 as from 2.8 to 8,
          which is how loudness-like quantities (guidance, temperature, top-k) are heard.
Whole-number parameters (top_k, layer, seed) are rounded.

Soft takeover ("pickup", the default; Mixxx's name): a knob's physical position says nothing about
the engine's value after the knob is first mapped or after something else (OSC, a preset, another
knob, automation) moved that value. Until the knob comes within one CC step of the value, or crosses
it between two messages, its messages are ignored; then it follows. `takeover: jump` follows at once.

A controller unplugged mid-set is noticed within controllers/midi_ports.POLL_SECONDS (its port leaves
the port list; rtmidi itself reports nothing), told to the performer on every surface (a notice:
status line, OSC /musicsteer/error, the page), and reconnected when a port of the same name returns,
told again; its knobs then pick their values up again (they may have moved meanwhile).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import mido

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change
from musicsteer.engine.params import LIVE, PARAMS

from .mappings import KnobMapping, Preset, TriggerMapping
from .midi_ports import (
    PortWatch,
    list_midi_inputs,
    list_midi_outputs,
    open_midi_input,
    open_midi_output,
    resolve_midi_port,
)

PRESS = 64  # a button CC at or above this value is a press (nanoKONTROL2 and most others send 127/0)
# After a pad or preset sets a value, the status shows the old one until the next token (20 ms in real
# time, longer on slow machines): for this long a knob must not pick up that old value again.
HOLD_SECONDS = 0.5


def knob_value(mapping: KnobMapping, cc: int) -> float:
    """The value a CC position stands for (not yet rounded)."""
    x = min(max(cc, 0), 127) / 127
    if mapping.curve == "linear":
        return mapping.low + (mapping.high - mapping.low) * x
    return mapping.low * (mapping.high / mapping.low) ** x


def knob_position(mapping: KnobMapping, value: float) -> float:
    """The CC position (clamped to 0..127, fractional) at which the knob would send `value`."""
    if mapping.curve == "linear":
        x = (value - mapping.low) / (mapping.high - mapping.low)
    else:  # a value <= 0 lies below any exp range: the log goes to -inf, i.e. the low end
        x = math.log(max(value, 1e-300) / mapping.low) / math.log(mapping.high / mapping.low)
    return min(max(x, 0.0), 1.0) * 127


def knob_target(mapping: KnobMapping, value: Any) -> float | None:
    """The CC position (0..127, fractional) that stands for `value`, the present value of the knob's
    parameter (a number; for a crossfade the mix dict); None if no position can: no value, or a mix
    this fader cannot express. Soft takeover (where the knob must be) and MIDI feedback (where a motor
    fader or LED ring goes, controllers/midi_feedback.py) share it, so they always agree."""
    if mapping.param == "crossfade":
        source, target = mapping.vectors or ("", "")
        mix = value if isinstance(value, dict) else {}
        total = mix.get(source, 0.0) + mix.get(target, 0.0)
        if not mix or set(mix) - {source, target} or total <= 0:
            return None  # a mix this fader cannot express: the fader is the way into its range
        return knob_position(mapping, mix.get(target, 0.0) / total)
    return None if value is None else knob_position(mapping, float(value))


@dataclass
class _Knob:
    engaged: bool = False
    last_cc: int | None = None
    last_sent: float | None = None  # position of the value last sent
    low: float = math.inf  # span (in positions) of values this knob sent that may still be in flight
    high: float = -math.inf
    hold: tuple[float, float] | None = None  # (position replaced by a pad or preset, until when)


class MidiMapper:
    """Maps messages to changes. Not thread-safe: one thread (mido's callback) calls `handle`."""

    def __init__(self, mappings: list[KnobMapping | TriggerMapping] | tuple[KnobMapping | TriggerMapping, ...],
                 presets: dict[str, Preset] | None, current: Callable[[str], Any], morph_seconds: float = 2.0) -> None:
        """`current(param)` reads the engine's present value (a number, the mix dict for "mix", or None
        when unknown), e.g. `values_reader(session.control)`. `morph_seconds` is the morph time of morph
        triggers without their own `seconds` (a knob with param morph_seconds moves it)."""
        self.mappings = tuple(mappings)
        self.presets = dict(presets or {})
        self.current = current
        self.morph_seconds = morph_seconds
        self._knobs = {i: _Knob() for i, m in enumerate(self.mappings) if isinstance(m, KnobMapping)}
        for m in self.mappings:
            if isinstance(m, TriggerMapping) and m.action == "preset" and m.target not in self.presets:
                raise MusicsteerError(f"MIDI mapping (line {m.line}) recalls unknown preset {m.target!r}")

    def handle(self, msg: mido.Message) -> list[Change]:
        """The changes one message asks for (empty: unmapped, a release, or held by soft takeover)."""
        if msg.type == "control_change":
            kind, number, value = "cc", msg.control, msg.value
        elif msg.type == "note_on" and msg.velocity > 0:  # note-on with velocity 0 is a note-off
            kind, number, value = "note", msg.note, msg.velocity
        else:
            return []
        channel = msg.channel + 1  # mido counts channels from 0, hardware and configs from 1
        out: list[Change] = []
        for i, m in enumerate(self.mappings):
            if m.channel is not None and m.channel != channel:
                continue
            if isinstance(m, KnobMapping):
                if kind == "cc" and m.cc == number:
                    out += self._knob(i, m, value)
            elif (m.note == number) if kind == "note" else (m.cc == number and value >= PRESS):
                out += self._trigger(m)
        return out

    # -- knobs ----------------------------------------------------------------------------------
    def _knob(self, index: int, m: KnobMapping, cc: int) -> list[Change]:
        state = self._knobs[index]
        if m.param == "morph_seconds":  # the mapper's own setting: nothing else moves it, no takeover
            self.morph_seconds = knob_value(m, cc)
            return []
        position = self._position(m)
        if m.takeover == "jump" or position is None:
            take = True  # nothing to pick up: follow at once
        elif state.engaged and state.low - 1 <= position <= state.high + 1:
            # The engine shows a value this knob sent (or one between, mid-slew): applying a change
            # waits for the next token, so the status may lag the knob by a few messages.
            take = True
        else:  # never picked up, or changed from elsewhere since: wait for the knob to reach the value
            state.engaged = False
            crossed = state.last_cc is not None and (state.last_cc - position) * (cc - position) < 0
            take = abs(cc - position) <= 1 or crossed
            if state.hold is not None and (abs(position - state.hold[0]) > 0.5 or time.monotonic() > state.hold[1]):
                state.hold = None  # the engine shows the new value (or it is long overdue)
            take = take and state.hold is None
            if take:
                state.low = state.high = position
        state.last_cc = cc
        if not take:
            return []
        if state.engaged and position is not None and state.last_sent is not None \
                and abs(position - state.last_sent) <= 1:
            state.low = state.high = position  # the engine caught up: nothing of ours is in flight
        state.engaged = True
        change, sent = self._knob_change(m, cc)
        state.last_sent = sent
        state.low, state.high = min(state.low, sent), max(state.high, sent)
        self._moved_elsewhere(change.param, except_index=index)
        return [change]

    def _knob_change(self, m: KnobMapping, cc: int) -> tuple[Change, float]:
        value = knob_value(m, cc)
        if m.param == "crossfade":
            t = min(max(value, 0.0), 1.0)
            source, target = m.vectors or ("", "")
            mix = {name: w for name, w in ((source, 1.0 - t), (target, t)) if w > 0}
            return Change("mix", mix), knob_position(m, t)
        if PARAMS[m.param].kind == "whole":
            value = round(value)
        return Change(m.param, value), knob_position(m, value)

    def _position(self, m: KnobMapping) -> float | None:
        """Where the knob must be to match the engine's present value; None if it cannot tell."""
        return knob_target(m, self.current("mix" if m.param == "crossfade" else m.param))

    def _moved_elsewhere(self, param: str, except_index: int | None = None, hold: bool = False) -> None:
        """Another control set `param`: knobs on it must pick it up again before they move it."""
        for i, state in self._knobs.items():
            m = self.mappings[i]
            affects = "mix" if m.param == "crossfade" else m.param
            if i != except_index and affects == param:
                state.engaged = False
                position = self._position(m) if hold else None
                state.hold = None if position is None else (position, time.monotonic() + HOLD_SECONDS)

    def disengage(self) -> None:
        """Every knob picks its value up again before it moves it (a controller that was away: its knobs
        may stand anywhere now)."""
        for state in self._knobs.values():
            state.engaged, state.last_cc, state.hold = False, None, None

    # -- notes and buttons ------------------------------------------------------------------------
    def _trigger(self, m: TriggerMapping) -> list[Change]:
        if m.action == "preset":
            changes = self.presets[str(m.target)].changes()
        else:
            seconds = (self.morph_seconds if m.seconds is None else m.seconds) if m.action == "morph" else 0.0
            changes = [Change("mix", m.target, seconds)]
        for change in changes:
            self._moved_elsewhere(change.param, hold=True)
        return changes


class ControlSurface(Protocol):
    """Where changes go and present values come from: the session's `ControlState`."""

    values: Any  # a Controls: one field per live row, named by its status key

    def submit(self, change: Change) -> Change: ...


def values_reader(control: ControlSurface) -> Callable[[str], Any]:
    """`current` for MidiMapper: a parameter's present value in `control.values` (layer: the first)."""
    def current(param: str) -> Any:
        value = getattr(control.values, LIVE[param].status)
        if param == "layer":
            return value[0] if value else None
        return value
    return current


class MidiInput:
    """A MIDI input port feeding a mapper into a control surface (the session's control state).

    mido calls `on_message` on its own thread for every message. Nothing raised there may reach mido
    (it would end the port's callback thread), so failures are counted and the last one is kept.
    notify(level, text): tells the performer (the session's `notify`) when the port goes away ("error")
    and when it is reconnected ("warning"); `connected` says which holds now, `reconnects` counts returns.
    """

    def __init__(self, surface: ControlSurface, port: str | int, mapper: MidiMapper, api: str | None = None,
                 notify: Callable[[str, str], None] | None = None) -> None:
        self.surface, self.spec, self.mapper, self.api = surface, port, mapper, api
        self.notify = notify or (lambda level, text: None)
        self.port_name: str | None = None
        self.received = self.applied = self.ignored = self.errors = self.reconnects = 0
        self.connected = False
        self.last_error = ""
        self._port: Any = None
        self._watch: Any = None
        self._lock = threading.Lock()  # the port: opened and closed by start/stop and the watch thread

    def start(self) -> str:
        """Open the port (MusicsteerError, one line, if it is unknown or cannot be opened) and watch it;
        returns its full name."""
        name = resolve_midi_port(self.spec, self.api)
        self._port = open_midi_input(name, self.on_message, self.api)
        self.port_name, self.connected = name, True
        self._watch = PortWatch(name, "input", self.api, self._lost, self._back)
        self._watch.start()
        return name

    def stop(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        with self._lock:
            port, self._port = self._port, None
            self.connected = False
        if port is not None:
            port.close()

    def _lost(self) -> None:  # the watch thread: the controller left the port list
        with self._lock:
            port, self._port = self._port, None
            self.connected = False
        if port is not None:
            with contextlib.suppress(Exception):  # a port whose peer is gone may fail to close: it is gone anyway
                port.close()
        self.notify("error", f"MIDI input {self.port_name!r} went away: its controls move nothing until it "
                             "returns (it reconnects by itself)")

    def _back(self, name: str) -> None:  # the watch thread: a port of the same name is there again
        self.mapper.disengage()  # (before the port opens: the mapper is only ever used by one thread at a time)
        try:
            port = open_midi_input(name, self.on_message, self.api)
        except MusicsteerError as exc:
            self.last_error = str(exc)
            assert self._watch is not None
            self._watch.present = False  # tried again at the next look
            return
        with self._lock:
            if self._watch is None:  # stopped meanwhile
                port.close()
                return
            self._port, self.port_name, self.connected = port, name, True
            self.reconnects += 1
        self.notify("warning", f"MIDI input {name!r} is back: reconnected")

    def __enter__(self) -> MidiInput:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on_message(self, msg: mido.Message) -> None:
        """mido's callback: map, then submit each change; never raises."""
        self.received += 1
        try:
            changes = self.mapper.handle(msg)
        except Exception as exc:  # noqa: BLE001 - a mapping bug must not kill the port's thread
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        if not changes:
            self.ignored += 1
        for change in changes:
            try:
                self.surface.submit(change)
                self.applied += 1
            except Exception as exc:  # noqa: BLE001 - MusicsteerError (counted by submit, by kind) or worse
                self.errors += 1
                self.last_error = str(exc) if isinstance(exc, MusicsteerError) else f"{type(exc).__name__}: {exc}"

    def counters(self) -> dict[str, int]:
        return {"received": self.received, "applied": self.applied, "ignored": self.ignored, "errors": self.errors}

    @staticmethod
    def list_inputs(api: str | None = None) -> list[str]:
        return list_midi_inputs(api)


__all__ = ["ControlSurface", "KnobMapping", "MidiInput", "MidiMapper", "Preset", "TriggerMapping", "knob_position",
           "knob_target", "knob_value", "list_midi_inputs", "list_midi_outputs", "open_midi_input", "open_midi_output",
           "resolve_midi_port", "values_reader"]
