"""Tests for MIDI feedback: what the mappings send back (knob curves, crossfades, lights), the dedupe,
the listener's never-block contract, and real messages through a JACK virtual MIDI port.

Pure tests call `feedback_state` / `MidiFeedback.plan` with plain {param: value} dicts, the shape
controllers/feedback.py gives. The port test opens a real rtmidi JACK virtual input, points a
MidiFeedback at it and drives it with `Applied` events, bare and from a real ControlState.
"""

from __future__ import annotations

import math
import time

import mido
import pytest
import torch

from musicsteer.controllers.feedback import current_values
from musicsteer.controllers.mappings import KnobMapping, Preset, TriggerMapping
from musicsteer.controllers.midi import knob_value, list_midi_outputs, resolve_midi_port
from musicsteer.controllers.midi_feedback import MidiFeedback, feedback_state, same_mix
from musicsteer.engine.control import Controls, ControlState
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Applied, Change, Listeners, MeterReading, Notice
from musicsteer.engine.vectors import SteeringVectors

ALPHA = KnobMapping(0, 1, "alpha", 0.0, 1.0)
GUIDANCE = KnobMapping(16, None, "guidance", 1.0, 8.0, "exp")
FADE = KnobMapping(1, 1, "crossfade", 0.0, 1.0, vectors=("classical", "electronic"))
FUSION = Preset("fusion", {"jazz": 0.6, "rock": 0.4}, 0.7, layer=(18,))
LIGHTS = (TriggerMapping("steer", {"classical": 1.0}, note=36),
          TriggerMapping("morph", {"jazz": 1.0}, cc=48, channel=2),
          TriggerMapping("preset", "fusion", cc=64, channel=1))
VALUES = {"alpha": 0.0, "mix": {}, "guidance": 3.0, "layer": [18], "top_k": 250, "prompt": ""}


def cc(number: int, value: int, channel: int = 1) -> mido.Message:
    return mido.Message("control_change", channel=channel - 1, control=number, value=value)


def note(number: int, velocity: int, channel: int = 1) -> mido.Message:
    return mido.Message("note_on", channel=channel - 1, note=number, velocity=velocity)


def state(*mappings, presets=None, **values) -> dict:
    return feedback_state(mappings, presets or {}, {**VALUES, **values})


def feedback(*mappings, presets=None, queue_size: int = 256, **values) -> MidiFeedback:
    """A MidiFeedback that is never started: plan() and on_event() are exercised directly."""
    return MidiFeedback(mappings, presets, "unused: not started", None, lambda: {**VALUES, **values},
                        queue_size=queue_size)


# -- what is sent ---------------------------------------------------------------------------------------

def test_knobs_send_the_input_curve_backwards() -> None:
    assert state(ALPHA, alpha=0.7) == {("control_change", 0, 0): 89}  # round(0.7 * 127)
    assert state(ALPHA, alpha=3.0)[("control_change", 0, 0)] == 127  # out of the knob's range: its end
    # exp: guidance 8^(64/127) is CC 64 on the way in, so the ring shows 64; channel None answers on 1
    assert state(GUIDANCE, guidance=8 ** (64 / 127)) == {("control_change", 0, 16): 64}
    for position in (0, 1, 37, 100, 127):  # what the knob would send, shown where the knob sends it
        assert state(GUIDANCE, guidance=knob_value(GUIDANCE, position))[("control_change", 0, 16)] == position
    top_k = KnobMapping(18, 3, "top_k", 10, 500, "exp")
    layer = KnobMapping(19, 1, "layer", 14, 22)
    got = state(top_k, layer, KnobMapping(23, 1, "morph_seconds", 0.5, 16.0, "exp"), top_k=250, layer=[18, 20])
    assert got == {("control_change", 2, 18): round(127 * math.log(25) / math.log(50)), ("control_change", 0, 19): 64}
    assert state(layer, layer=[]) == {}  # no layer yet (the vectors file's): nothing to show


def test_crossfade_shows_the_share_of_its_target() -> None:
    assert state(FADE, mix={"classical": 0.25, "electronic": 0.75}) == {("control_change", 0, 1): 95}
    assert state(FADE, mix={"classical": 2.0}) == {("control_change", 0, 1): 0}
    assert state(FADE, mix={"electronic": 1.0}) == {("control_change", 0, 1): 127}
    assert state(FADE, mix={"jazz": 1.0}) == {}  # a mix the fader cannot express: left where it is
    assert state(FADE, mix={}) == {}


def test_lights_follow_the_mix_and_presets() -> None:
    presets = {"fusion": FUSION}
    off = {("note_on", 0, 36): 0, ("control_change", 1, 48): 0, ("control_change", 0, 64): 0}
    assert state(*LIGHTS, presets=presets) == off  # velocity 0 note_on, not note_off
    assert state(*LIGHTS, presets=presets, mix={"classical": 3.0}) == {**off, ("note_on", 0, 36): 127}
    assert state(*LIGHTS, presets=presets, mix={"jazz": 0.5}) == {**off, ("control_change", 1, 48): 127}
    # a preset is its mix *and* its alpha; weights compare normalised
    assert state(*LIGHTS, presets=presets, mix={"jazz": 1.2, "rock": 0.8}, alpha=0.7) == \
        {**off, ("control_change", 0, 64): 127}
    assert state(*LIGHTS, presets=presets, mix={"jazz": 0.6, "rock": 0.4}, alpha=0.6) == off
    assert state(*LIGHTS, presets=presets, mix={"jazz": 0.6, "rock": 0.41}, alpha=0.7) == off
    # two lights on one button: lit if either is
    both = (TriggerMapping("steer", {"rock": 1.0}, note=40), TriggerMapping("morph", {"jazz": 1.0}, note=40))
    assert state(*both, mix={"rock": 1.0}) == state(*both, mix={"jazz": 1.0}) == {("note_on", 0, 40): 127}


def test_same_mix() -> None:
    assert same_mix({"a": 0.5, "b": 0.5}, {"b": 1.0, "a": 1.0})
    assert same_mix({"a": 1.0, "b": 0.0}, {"a": 1.0})
    assert same_mix({"a": 1.0}, {"a": 1.0 + 1e-7})
    assert not same_mix({"a": 1.0, "b": -1.0}, {"a": 1.0, "b": 1.0})
    assert not same_mix({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.49})
    assert not same_mix({}, {"a": 1.0}) and not same_mix(None, {"a": 1.0})


def test_only_changed_values_are_sent_after_the_full_state() -> None:
    fb = feedback(ALPHA, FADE, *LIGHTS, presets={"fusion": FUSION})
    first = fb.plan(fb.values(), full=True)
    assert first == [cc(0, 0), note(36, 0), cc(48, 0, channel=2), cc(64, 0)]  # FADE: mix {} shows nothing
    assert fb.plan({"alpha": 0.0}) == []
    assert fb.plan({"alpha": 0.5}) == [cc(0, 64)]
    assert fb.plan({"alpha": 0.501}) == []  # the same CC step: nothing new to show
    assert fb.plan({"mix": {"classical": 1.0}}) == [cc(1, 0), note(36, 127)]
    # a morph's target arriving again (or every token) sends nothing more
    assert fb.plan({"mix": {"classical": 1.0}}) == fb.plan({"mix": {"classical": 2.0}}) == []
    assert fb.plan({"mix": {"jazz": 0.6, "rock": 0.4}, "alpha": 0.7}) == [cc(0, 89), note(36, 0), cc(64, 127)]
    assert fb.plan({}, full=True) == [cc(0, 89), note(36, 0), cc(48, 0, channel=2), cc(64, 127)]


def test_on_event_only_enqueues_and_counts_what_it_drops() -> None:
    fb = feedback(ALPHA, queue_size=2)
    for event in (MeterReading(1, {"jazz": 0.5}), Notice(1, "warning", "x"), Applied(1, (Change("prompt", "p"),))):
        fb.on_event(event)
    assert fb._queue.qsize() == 0  # nothing there changes what the surface shows
    for step in range(5):
        fb.on_event(Applied(step, (Change("alpha", step / 10), Change("prompt", "p"))))
    assert fb._queue.qsize() == 2 and fb.counters() == {"sent": 0, "dropped": 3, "errors": 0, "reconnects": 0}
    assert fb._queue.get_nowait() == {"alpha": 0.0}
    fb.on_event("not an event")  # type: ignore[arg-type]  # ignored, never raised
    assert fb.errors == 0


# -- a real port: JACK virtual MIDI ---------------------------------------------------------------------

def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not (met := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return met



def test_feedback_reaches_a_jack_port(jack_midi: str) -> None:
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    received: list[mido.Message] = []
    sink = backend.open_input("fb-sink", virtual=True, callback=received.append)  # the "controller"
    try:
        with pytest.raises(MusicsteerError, match=r"^unknown MIDI output 'no-such-surface'; available: 0 '"):
            MidiFeedback([ALPHA], {}, "no-such-surface", "jack", dict).start()
        assert resolve_midi_port("fb-sink", "jack", direction="output") in list_midi_outputs("jack")
        vectors = SteeringVectors.create({k: torch.randn(4, 8) for k in ("classical", "jazz")}, model="tiny",
                                         method="random", best_layer=1)
        control = ControlState(Controls(alpha=0.0), vectors, num_layers=4, steps_per_second=50.0)
        listeners = Listeners()
        fb = MidiFeedback([ALPHA, TriggerMapping("steer", {"jazz": 1.0}, note=36)], {}, "fb-sink", "jack",
                          lambda: current_values(control.values))
        listeners.add(fb.on_event)
        with fb:
            assert "fb-sink" in (fb.port_name or "")
            assert _wait(lambda: len(received) >= 2), f"the initial state did not arrive: {received}"
            assert received == [cc(0, 0), note(36, 0)]
            fb.on_event(Applied(1, (Change("alpha", 0.7),)))
            assert _wait(lambda: len(received) >= 3) and received[2] == cc(0, 89)
            # through the engine's own path: submit, apply at a token boundary, tell the listeners
            control.submit(Change("mix", {"jazz": 1.0}, seconds=1.0))  # a morph: its target shows at once
            control.submit(Change("alpha", 0.7))  # unchanged: nothing sent
            listeners.emit(Applied(2, tuple(control.apply_due(2).changes)))
            assert _wait(lambda: len(received) >= 4) and received[3] == note(36, 127)
            for step in range(3, 8):  # the morph runs on; no new Applied, nothing sent
                assert not control.apply_due(step).changes
            control.submit(Change("alpha", 0.0))
            listeners.emit(Applied(8, tuple(control.apply_due(8).changes)))
            assert _wait(lambda: len(received) >= 5)
            time.sleep(0.2)  # anything else in flight would have arrived by now
        assert received[3:] == [note(36, 127), cc(0, 0)]
        assert fb.counters() == {"sent": 5, "dropped": 0, "errors": 0, "reconnects": 0} and listeners.errors == 0
        fb.stop()  # idempotent
    finally:
        sink.close()
