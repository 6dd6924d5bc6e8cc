"""Tests for MIDI control: curves, soft takeover, notes/buttons, ports, and the midi-learn command.

Mapping tests go through `MidiInput.on_message` (the callback mido calls for a live port) with real
`mido.Message`s. `RecordingSurface` stands in for the engine's control state only as a recorder: it checks
changes with `validate_change` (as ControlState.submit does), records them, and serves the values soft
takeover reads.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mido
import pytest

from musicsteer.commands import midi_learn
from musicsteer.controllers.config import load_config
from musicsteer.controllers.mappings import Preset
from musicsteer.controllers.midi import (
    KnobMapping,
    MidiInput,
    MidiMapper,
    TriggerMapping,
    knob_position,
    knob_value,
    list_midi_inputs,
    resolve_midi_port,
    values_reader,
)
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change, validate_change

LABELS = ("classical", "electronic", "jazz", "rock")
FUSION = Preset("fusion", {"classical": 0.5, "electronic": 0.5}, 0.6, layer=(18,))


class RecordingSurface:
    """Records submitted changes; applies them to its status at once unless `lag` (engine not there yet)."""

    def __init__(self, **values: object) -> None:
        self.state: dict = {"alpha": 0.0, "mix": {}, "layers": (18,), "guidance": 3.0, "top_k": 250, **values}
        self.submitted: list[Change] = []
        self.lag = False

    def submit(self, change: Change) -> Change:
        change = validate_change(change)
        if change.param == "mix" and (unknown := [n for n in change.value if n not in LABELS]):
            raise MusicsteerError(f"unknown vector {unknown[0]!r}; the vectors file has: {', '.join(LABELS)}")
        self.submitted.append(change)
        if not self.lag:
            self.apply(change)
        return change

    def apply(self, change: Change) -> None:
        self.state["layers" if change.param == "layer" else change.param] = change.value

    @property
    def values(self) -> SimpleNamespace:  # what ControlState.values offers: fields named by status keys
        return SimpleNamespace(**self.state)


def cc(control: int, value: int, channel: int = 1) -> mido.Message:
    return mido.Message("control_change", channel=channel - 1, control=control, value=value)


def note(number: int, velocity: int = 100, channel: int = 1) -> mido.Message:
    return mido.Message("note_on", channel=channel - 1, note=number, velocity=velocity)


def rig(*mappings: KnobMapping | TriggerMapping, presets: dict | None = None,
        **values: object) -> tuple[MidiInput, RecordingSurface]:
    surface = RecordingSurface(**values)
    mapper = MidiMapper(mappings, presets, values_reader(surface))
    return MidiInput(surface, "unused: on_message is called directly", mapper), surface


def feed(midi: MidiInput, *messages: mido.Message) -> list[Change]:
    before = len(midi.surface.submitted)
    for msg in messages:
        midi.on_message(msg)
    return midi.surface.submitted[before:]


ALPHA = KnobMapping(0, 1, "alpha", 0.0, 1.0)


def test_linear_curve_and_channel() -> None:
    midi, _ = rig(KnobMapping(0, 1, "alpha", 0.0, 1.0, takeover="jump"))
    got = feed(midi, cc(0, 0), cc(0, 127), cc(0, 64), cc(0, 90, channel=2), cc(1, 5))
    assert [c.value for c in got] == [0.0, 1.0, pytest.approx(64 / 127)]
    assert midi.counters() == {"received": 5, "applied": 3, "ignored": 2, "errors": 0}


def test_exp_curve_spaces_values_by_equal_ratios() -> None:
    guidance = KnobMapping(1, None, "guidance", 1.0, 8.0, "exp", "jump")
    midi, _ = rig(guidance)
    got = [c.value for c in feed(midi, cc(1, 0), cc(1, 127), cc(1, 64), cc(1, 65), cc(1, 100), cc(1, 101))]
    assert got[:2] == [pytest.approx(1.0), pytest.approx(8.0)]
    assert got[2] == pytest.approx(8 ** (64 / 127))
    assert got[3] / got[2] == pytest.approx(got[5] / got[4])  # every step multiplies by 8 ** (1/127)
    for position in (0, 17, 64, 127):
        assert knob_position(guidance, knob_value(guidance, position)) == pytest.approx(position)
    assert knob_position(guidance, 0.0) == 0.0 and knob_position(guidance, 50.0) == 127.0  # clamped


def test_whole_number_params_are_rounded() -> None:
    midi, _ = rig(KnobMapping(2, None, "layer", 14, 22, takeover="jump"),
                  KnobMapping(3, None, "top_k", 10, 500, "exp", "jump"))
    got = feed(midi, cc(2, 0), cc(2, 64), cc(2, 127), cc(3, 127))
    assert got == [Change("layer", (14,)), Change("layer", (18,)), Change("layer", (22,)), Change("top_k", 500)]
    assert all(isinstance(v, int) for c in got for v in (c.value if isinstance(c.value, tuple) else (c.value,)))


def test_pickup_waits_until_the_knob_reaches_the_value() -> None:
    midi, surface = rig(ALPHA, alpha=0.5)  # the knob's value 0.5 sits at position 63.5
    assert feed(midi, cc(0, 10), cc(0, 30), cc(0, 62)) == []  # approaching, not there yet
    assert midi.ignored == 3
    got = feed(midi, cc(0, 63), cc(0, 70), cc(0, 20))  # within one step: picked up, then it follows
    assert [c.value for c in got] == [pytest.approx(v / 127) for v in (63, 70, 20)]
    assert surface.state["alpha"] == pytest.approx(20 / 127)


def test_pickup_when_the_knob_jumps_across_the_value() -> None:
    midi, _ = rig(ALPHA, alpha=0.5)
    assert feed(midi, cc(0, 100)) == []
    assert [c.value for c in feed(midi, cc(0, 30), cc(0, 31))] == [pytest.approx(30 / 127), pytest.approx(31 / 127)]


def test_value_changed_elsewhere_is_picked_up_again() -> None:
    midi, surface = rig(ALPHA, alpha=0.0)
    assert len(feed(midi, cc(0, 0), cc(0, 40))) == 2
    surface.state["alpha"] = 0.9  # OSC or automation moved alpha (position 114.3)
    assert feed(midi, cc(0, 45), cc(0, 80), cc(0, 113)) == []
    assert [c.value for c in feed(midi, cc(0, 114), cc(0, 120))] == [pytest.approx(114 / 127), pytest.approx(120 / 127)]


def test_a_lagging_engine_does_not_break_the_pickup() -> None:
    # The engine applies changes at the next token, so status() can trail the knob by several messages.
    midi, surface = rig(ALPHA, alpha=0.0)
    surface.lag = True
    got = feed(midi, cc(0, 1), cc(0, 10), cc(0, 30), cc(0, 50))
    assert len(got) == 4 and surface.state["alpha"] == 0.0  # nothing applied yet, the knob still follows
    surface.apply(got[1])  # the engine reaches a value between
    assert len(feed(midi, cc(0, 60))) == 1
    surface.apply(Change("alpha", 60 / 127))  # caught up; now a jump elsewhere is noticed
    surface.state["alpha"] = 1.0
    assert feed(midi, cc(0, 61)) == []


def test_a_preset_from_a_pad_makes_knobs_pick_up_again() -> None:
    midi, surface = rig(ALPHA, KnobMapping(2, None, "layer", 14, 22), TriggerMapping("preset", "fusion", note=38),
                        presets={"fusion": FUSION}, alpha=0.0)
    feed(midi, cc(0, 0), cc(0, 20))
    surface.lag = True  # the engine has not reached the next token: status still shows the knob's value
    assert feed(midi, note(38)) == FUSION.changes()
    assert feed(midi, cc(0, 20), cc(0, 21)) == []  # so that old value is not picked up again
    surface.apply(FUSION.changes()[1])
    assert feed(midi, cc(0, 21)) == []
    assert len(feed(midi, cc(0, 76))) == 1  # 0.6 sits at 76.2


def test_two_knobs_on_one_param() -> None:
    midi, _ = rig(ALPHA, KnobMapping(5, None, "alpha", 0.0, 1.0), alpha=0.0)
    feed(midi, cc(0, 0), cc(0, 100))
    assert feed(midi, cc(5, 0)) == []  # the second knob is far from 100/127: it must pick up
    assert len(feed(midi, cc(5, 100))) == 1
    assert feed(midi, cc(0, 50)) == []  # and now the first knob has to pick up again


def test_jump_takeover_follows_at_once() -> None:
    midi, _ = rig(KnobMapping(0, None, "alpha", 0.0, 1.0, takeover="jump"), alpha=0.5)
    assert [c.value for c in feed(midi, cc(0, 0))] == [0.0]


def test_notes_and_buttons_select_vectors() -> None:
    midi, _ = rig(TriggerMapping("steer", {"classical": 1.0}, note=36),
                  TriggerMapping("morph", {"electronic": 1.0}, note=37, seconds=4.0),
                  TriggerMapping("morph", {"jazz": 1.0}, cc=48, channel=1),
                  TriggerMapping("steer", {"rock": 1.0}, cc=32),
                  KnobMapping(23, None, "morph_seconds", 0.5, 16.0, "exp"))
    releases = (note(36, velocity=0), mido.Message("note_off", note=36), cc(32, 0), cc(48, 0))
    assert feed(midi, *releases) == []
    assert feed(midi, note(36), note(37), cc(32, 127)) == [
        Change("mix", {"classical": 1.0}), Change("mix", {"electronic": 1.0}, 4.0), Change("mix", {"rock": 1.0})]
    assert feed(midi, cc(48, 127)) == [Change("mix", {"jazz": 1.0}, 2.0)]  # the default morph time
    assert feed(midi, cc(23, 127), cc(48, 127)) == [Change("mix", {"jazz": 1.0}, 16.0)]  # knob 8 set it
    assert feed(midi, cc(48, 127, channel=2)) == []


def test_crossfade_fader_between_two_vectors() -> None:
    fader = KnobMapping(1, None, "crossfade", 0.0, 1.0, vectors=("classical", "electronic"))
    midi, surface = rig(fader, TriggerMapping("steer", {"jazz": 1.0}, note=40), mix={"classical": 1.0})
    assert feed(midi, cc(1, 64)) == []  # the mix is all classical: the fader must start at 0
    got = feed(midi, cc(1, 0), cc(1, 127), cc(1, 64))
    assert got[:2] == [Change("mix", {"classical": 1.0}), Change("mix", {"electronic": 1.0})]
    assert got[2].value == pytest.approx({"classical": 63 / 127, "electronic": 64 / 127})
    feed(midi, note(40))  # jazz: a mix the fader cannot express, so it takes over at once
    assert surface.state["mix"] == {"jazz": 1.0}
    assert feed(midi, cc(1, 127)) == [Change("mix", {"electronic": 1.0})]


def test_errors_are_counted_never_raised() -> None:
    midi, _ = rig(TriggerMapping("steer", {"techno": 1.0}, note=36), ALPHA)
    assert feed(midi, note(36)) == []
    assert midi.errors == 1 and midi.last_error.startswith("unknown vector 'techno'")

    def broken(param: str) -> float:
        raise RuntimeError("status unavailable")
    midi.mapper.current = broken
    midi.on_message(cc(0, 3))
    midi.on_message(mido.Message("sysex", data=[1, 2]))
    assert midi.counters() == {"received": 3, "applied": 0, "ignored": 1, "errors": 2}
    assert midi.last_error == "RuntimeError: status unavailable"


def test_mapper_refuses_unknown_preset() -> None:
    with pytest.raises(MusicsteerError, match="unknown preset 'x'"):
        MidiMapper([TriggerMapping("preset", "x", note=1, line=4)], {}, lambda _: None)


def test_resolve_midi_port() -> None:
    inputs = ["Midi Through:Midi Through Port-0 14:0", "nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0"]
    assert resolve_midi_port("nanoKONTROL2", inputs=inputs) == inputs[1]
    assert resolve_midi_port("NANOkontrol", inputs=inputs) == inputs[1]
    assert resolve_midi_port(0, inputs=inputs) == inputs[0]
    assert resolve_midi_port("1", inputs=inputs) == inputs[1]
    assert resolve_midi_port(inputs[0], inputs=inputs) == inputs[0]
    for spec, message in [
        ("launchpad", "unknown MIDI input 'launchpad'; available: 0 'Midi Through:Midi Through Port-0 14:0', "
                      "1 'nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0'"),
        (5, "no MIDI input with index 5; available: 0 "),
        ("midi", "MIDI input 'midi' matches 2 inputs"),
    ]:
        with pytest.raises(MusicsteerError) as info:
            resolve_midi_port(spec, inputs=inputs)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(MusicsteerError, match=r"^unknown MIDI input 'x': no MIDI inputs$"):
        resolve_midi_port("x", inputs=[])


def test_listing_inputs_on_this_machine_is_one_line_either_way() -> None:
    try:
        assert all(isinstance(name, str) for name in list_midi_inputs())
    except MusicsteerError as exc:  # e.g. no ALSA sequencer (a kernel built without sound)
        assert "\n" not in str(exc) and str(exc).startswith("cannot list MIDI inputs: ")


# -- real ports: messages through rtmidi virtual ports (ALSA sequencer, JACK MIDI) --------------------

RTMIDI_API = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK"}


def _virtual_output(api: str, name: str) -> mido.ports.BaseOutput:
    backend = mido.Backend(f"mido.backends.rtmidi/{RTMIDI_API[api]}", load=True)
    try:
        return backend.open_output(name, virtual=True)
    except (SystemError, OSError, RuntimeError) as exc:
        if api != "alsa":
            raise
        # The one allowed skip: the kernel facility is missing, not a musicsteer feature.
        seq = "exists" if os.path.exists("/dev/snd/seq") else "does not exist (kernel without ALSA sequencer)"
        pytest.skip(f"cannot open an ALSA virtual MIDI port: /dev/snd/seq {seq}; rtmidi: {exc}")


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not (met := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return met


def _through_a_virtual_port(api: str) -> None:
    out = _virtual_output(api, "musicsteer-test")
    try:
        surface = RecordingSurface(alpha=0.0)
        mapper = MidiMapper([ALPHA, TriggerMapping("steer", {"jazz": 1.0}, note=36)], {}, values_reader(surface))
        with pytest.raises(MusicsteerError, match=r"^unknown MIDI input 'no-such-controller'; available: 0 '"):
            resolve_midi_port("no-such-controller", api)
        midi = MidiInput(surface, "musicsteer-test", mapper, api=api)
        with midi:
            assert "musicsteer-test" in (midi.port_name or "")
            # Ports connect asynchronously: knock (an unmapped channel) until the input hears us.
            assert _wait(lambda: out.send(cc(0, 0, channel=16)) or midi.received > 0), "no message arrived"
            start = midi.received
            for msg in (cc(0, 0), cc(0, 127), note(36), cc(0, 5), note(36, velocity=0)):
                out.send(msg)
            assert _wait(lambda: midi.received >= start + 5)
        assert surface.submitted == [Change("alpha", 0.0), Change("alpha", 1.0), Change("mix", {"jazz": 1.0}),
                                     Change("alpha", 5 / 127)]
        assert midi.errors == 0 and midi.applied == 4 and midi.ignored == midi.received - 4
    finally:
        out.close()


def test_virtual_port_alsa() -> None:
    _through_a_virtual_port("alsa")



def test_virtual_port_jack(jack_midi: str) -> None:
    _through_a_virtual_port("jack")


def test_midi_learn_command_over_jack(jack_midi: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    midi_learn.register((parser := argparse.ArgumentParser()).add_subparsers())
    out = _virtual_output("jack", "learn-test")
    stop = threading.Event()

    def performer() -> None:  # the same gestures over and over: bound controls are ignored, so order is safe
        while not stop.is_set():
            for msg in (cc(16, 10), cc(17, 20), note(36), note(36, velocity=0), cc(32, 127), cc(32, 0)):
                out.send(msg)
            time.sleep(0.05)

    thread = threading.Thread(target=performer, daemon=True)
    thread.start()
    path = tmp_path / "learned.yaml"
    try:
        args = parser.parse_args(["midi-learn", "--api", "jack", "--port", "learn-test", "--params",
                                  "alpha,guidance", "--notes", "classical,electronic", "--out", str(path),
                                  "--timeout", "20"])
        assert args.run(args) == 0
        assert "Client:learn-test" in list_midi_inputs("jack")[0]
    finally:
        stop.set()
        thread.join()
        out.close()
    config = load_config(path)
    assert config.midi is not None and config.midi.port == "learn-test"
    assert [(m.cc, getattr(m, "note", None)) for m in config.midi.mappings] == [
        (16, None), (17, None), (None, 36), (32, None)]
    assert "wrote" in capsys.readouterr().out
    args = parser.parse_args(["midi-learn", "--api", "jack", "--port", "0", "--params", "alpha",
                              "--out", str(tmp_path / "never.yaml"), "--timeout", "0.2"])
    out = _virtual_output("jack", "silent")
    try:
        with pytest.raises(MusicsteerError, match=r"^nothing learned: no control on 'RtMidiOut Client:silent' moved"):
            args.run(args)
    finally:
        out.close()
    assert not (tmp_path / "never.yaml").exists()
