"""Tests for the session config loader (`--config FILE.yaml`)."""

from __future__ import annotations

from pathlib import Path

import mido
import pytest
from conftest import one_line_error

from musicsteer.controllers.config import (
    OscConfig,
    check_vector_names,
    load_config,
    parse_config,
    preset_changes,
)
from musicsteer.controllers.mappings import KnobMapping, TriggerMapping
from musicsteer.controllers.midi_learn import KnobTarget, MidiLearn, parse_knob_targets
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LABELS = ("classical", "electronic", "jazz", "rock")

FULL = """\
osc:
  host: 0.0.0.0
  port: 9001
  allow: [127.0.0.1, 192.168.1.0/24]
  status_interval: 0.5
midi:
  port: "nanoKONTROL2"
  api: jack
  mappings:
    - {cc: 0, channel: 1, param: alpha, min: 0.0, max: 1.0, curve: linear}
    - {cc: 1, param: guidance, min: 1.0, max: 8.0, curve: exp, takeover: jump}
    - {cc: 2, param: layer, min: 14, max: 22}
    - {cc: 3, param: crossfade, from: classical, to: jazz}
    - {note: 36, steer: classical}
    - {note: 37, morph: electronic, seconds: 4}
    - {note: 38, channel: 10, preset: fusion}
    - {cc: 32, steer: "jazz=0.5,rock=0.5"}
presets:
  fusion: {mix: {classical: 0.5, electronic: 0.5}, alpha: 0.6, layer: 18, site: residual, seconds: 4}
  calm: {mix: jazz, alpha: 0.2}
defaults:
  prompt: "a string quartet"
  seed: 7
  guidance: 3.5
  temperature: 0.9
  top_k: 200
  top_p: 0.0
  alpha: 0.4
  steer: classical
  layer: [17, 19]
  site: attention
  buffer: 1.5
  prebuffer: 0.5
"""


def test_full_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.source == str(path)
    assert config.osc == OscConfig("0.0.0.0", 9001, ("127.0.0.1", "192.168.1.0/24"), 0.5)
    assert config.midi is not None and config.midi.port == "nanoKONTROL2" and config.midi.api == "jack"
    assert config.midi.mappings == (
        KnobMapping(0, 1, "alpha", 0.0, 1.0, "linear", "pickup", None, 10),
        KnobMapping(1, None, "guidance", 1.0, 8.0, "exp", "jump", None, 11),
        KnobMapping(2, None, "layer", 14.0, 22.0, "linear", "pickup", None, 12),
        KnobMapping(3, None, "crossfade", 0.0, 1.0, "linear", "pickup", ("classical", "jazz"), 13),
        TriggerMapping("steer", {"classical": 1.0}, note=36, line=14),
        TriggerMapping("morph", {"electronic": 1.0}, note=37, seconds=4.0, line=15),
        TriggerMapping("preset", "fusion", note=38, channel=10, line=16),
        TriggerMapping("steer", {"jazz": 0.5, "rock": 0.5}, cc=32, line=17),
    )
    assert set(config.presets) == {"fusion", "calm"}
    assert config.defaults == {"prompt": "a string quartet", "seed": 7, "guidance": 3.5, "temperature": 0.9,
                               "top_k": 200, "top_p": 0.0, "alpha": 0.4, "mix": {"classical": 1.0},
                               "layer": (17, 19), "site": "attention", "buffer": 1.5, "prebuffer": 0.5}
    check_vector_names(config, LABELS)


def test_preset_changes_are_validated_changes() -> None:
    config = parse_config(FULL)
    assert preset_changes(config, "fusion") == [
        Change("mix", {"classical": 0.5, "electronic": 0.5}, 4.0),
        Change("alpha", 0.6, 4.0),
        Change("layer", (18,)),
        Change("site", "residual"),
    ]
    assert preset_changes(config, "calm") == [Change("mix", {"jazz": 1.0}), Change("alpha", 0.2)]
    with pytest.raises(MusicsteerError, match=r"^unknown preset 'nope' \(known: fusion, calm\)$"):
        preset_changes(config, "nope")


@pytest.mark.parametrize("name", ["nanokontrol2.yaml", "session.yaml"])
def test_examples_load(name: str) -> None:
    config = load_config(EXAMPLES / name)
    check_vector_names(config, LABELS)
    assert config.presets


def test_nanokontrol2_example_uses_factory_ccs() -> None:
    config = load_config(EXAMPLES / "nanokontrol2.yaml")
    assert config.midi is not None
    ccs = {m.cc for m in config.midi.mappings}
    faders, knobs = set(range(0, 8)), set(range(16, 24))
    buttons = set(range(32, 40)) | set(range(48, 56)) | set(range(64, 72))
    assert ccs <= faders | knobs | buttons
    assert {m.param for m in config.midi.mappings if isinstance(m, KnobMapping)} >= {
        "alpha", "guidance", "temperature", "top_k", "layer"}
    assert all(m.channel == 1 for m in config.midi.mappings)
    assert {m.action for m in config.midi.mappings if isinstance(m, TriggerMapping)} == {"steer", "morph", "preset"}


def cc(control: int, value: int, channel: int = 1) -> mido.Message:
    return mido.Message("control_change", channel=channel - 1, control=control, value=value)


def note(number: int, velocity: int = 100, channel: int = 1) -> mido.Message:
    return mido.Message("note_on", channel=channel - 1, note=number, velocity=velocity)


def _error(text: str) -> str:
    return one_line_error(parse_config, text, source="set.yaml")


M = "midi:\n  mappings:\n    - "
BLOCK = "midi:\n  mappings:\n    - cc: 1\n      channel: 1\n      param: alpha\n      {}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("osc: {port: 9000}\nextra: 1\n", "set.yaml line 2: unknown key 'extra' in the config (known: osc, midi"),
    ("osc:\n  port: 70000\n", 'set.yaml line 2: port must be at least 0 and at most 65535, got 70000'),
    ("osc:\n  host: x\n  allow: [10.0.0.0/8, nowhere]\n", "set.yaml line 3: 'allow' needs IP addresses"),
    ("osc:\n  status_interval: fast\n", "set.yaml line 2: status_interval needs a number, got 'fast'"),
    ("osc:\n  hots: x\n", "set.yaml line 2: unknown key 'hots' in osc (known: host, port, allow, status_interval)"),
    (M + "{cc: 1, param: alpha}\n    - {cc: 128, param: alpha}\n",
     'set.yaml line 4: cc must be at least 0 and at most 127, got 128'),
    (M + "{cc: -1, param: alpha}\n", 'set.yaml line 3: cc must be at least 0 and at most 127, got -1'),
    (M + "{cc: 1.5, param: alpha}\n", 'set.yaml line 3: cc needs a whole number, got 1.5'),
    (M + "{note: 36, channel: 17, steer: jazz}\n",
     'set.yaml line 3: channel must be at least 1 and at most 16, got 17'),
    (M + "{cc: 1, param: volume}\n",
     'set.yaml line 3: param must be one of seed, guidance, temperature, top_k, top_p,'),
    (BLOCK.format("curve: cubic"), "set.yaml line 6: curve must be one of linear, exp, log, got 'cubic'"),
    (BLOCK.format("takeover: soft"), "set.yaml line 6: takeover must be one of pickup, jump, got 'soft'"),
    (BLOCK.format("minimum: 0"), "set.yaml line 6: unknown key 'minimum' in a MIDI mapping (known: cc, channel"),
    (BLOCK.format("max: lots"), "set.yaml line 6: max of alpha needs a number, got 'lots'"),
    (BLOCK.format("seconds: 2"), "set.yaml line 6: key 'seconds' does not apply to a knob"),
    (M + "{cc: 1, param: guidance, min: 0, max: 8, curve: exp}\n",
     "set.yaml line 3: curve exp spaces values by equal ratios: it needs min and max > 0"),
    (M + "{cc: 1, param: layer}\n", "set.yaml line 3: param layer needs 'min' and 'max'"),
    (M + "{cc: 1, param: alpha, min: 1, max: 1}\n", "set.yaml line 3: 'min' and 'max' must differ"),
    (M + "{cc: 1, note: 2, steer: jazz}\n", "set.yaml line 3: a MIDI mapping needs exactly one"),
    (M + "{channel: 2, steer: jazz}\n", "set.yaml line 3: a MIDI mapping needs exactly one"),
    (M + "{note: 36}\n", "set.yaml line 3: a note mapping needs one of steer, morph, preset"),
    (M + "{note: 36, steer: jazz, preset: x}\n", "set.yaml line 3: a MIDI mapping does one thing"),
    (M + "{note: 36, steer: jazz, seconds: 2}\n", "set.yaml line 3: 'seconds' sets a morph time"),
    (M + "{note: 36, preset: fusion}\n", "set.yaml line 3: unknown preset 'fusion' (known: none)"),
    (M + "{note: 36, steer: 'jazz=x'}\n", "set.yaml line 3: the weight of jazz needs a number, got 'x'"),
    (M + "{cc: 4, param: crossfade, from: jazz}\n", "set.yaml line 3: 'from' and 'to'"),
    (M + "{cc: 4, param: alpha, to: jazz}\n", "set.yaml line 3: 'from' and 'to'"),
    ("midi:\n  port: [1]\n", "set.yaml line 2: 'port' needs a MIDI input name"),
    ("midi:\n  port: x\n  output: true\n", "set.yaml line 3: 'output' needs a MIDI output name"),
    ("midi:\n  output: ''\n", "set.yaml line 2: 'output' needs a MIDI output name"),
    ("midi:\n  api: coreaudio\n", "set.yaml line 2: api must be one of alsa, jack, got 'coreaudio'"),
    ("midi:\n  mappings: {cc: 1}\n", "set.yaml line 2: 'mappings' needs a list"),
    ("presets:\n  a: {mix: jazz, alpha: 0.5}\n  b: {alpha: 0.5}\n",
     "set.yaml line 3: preset 'b' needs 'mix' and 'alpha'"),
    ("presets:\n  a: {mix: jazz, alpha: 0.5, gain: 2}\n",
     "set.yaml line 2: unknown key 'gain' in preset 'a' (known: mix"),
    ("presets:\n  a: {mix: jazz, alpha: 0.5, layer: 1.5}\n", 'set.yaml line 2: layer needs a whole number, got 1.5'),
    ("presets:\n  a: {mix: jazz, alpha: 0.5, site: mlp}\n", "set.yaml line 2: site must be one of residual, attention"),
    ("presets:\n  a: {mix: jazz, alpha: 50}\n", 'set.yaml line 2: alpha must be at least -10 and at most 10, got 50'),
    ("presets:\n  a: {mix: {jazz: 0}, alpha: 1}\n", 'set.yaml line 2: a mix needs at least one non-zero weight'),
    ("presets: [a, b]\n", "set.yaml line 1: 'presets' needs named presets"),
    ("defaults:\n  prompt: x\n  guidance: 31\n", 'set.yaml line 3: guidance must be at least 0 and at most 30, got 31'),
    ("defaults:\n  top_k: many\n", "set.yaml line 2: top_k needs a whole number, got 'many'"),
    ("defaults:\n  prompt: [x]\n", "set.yaml line 2: prompt needs text, got list ['x']"),
    ("defaults:\n  steer: jazz\n  mix: rock\n", "set.yaml line 3: give one of 'mix' or 'steer'"),
    ("defaults:\n  buffer: 0.5\n  prebuffer: 1.0\n", "set.yaml line 3: the prebuffer (1 s) cannot be longer than the "
                                                  "buffer (0.5 s)"),
    ("defaults:\n  buffer: auto\n  prebuffer: 3\n", "set.yaml line 3: the prebuffer (3 s) cannot be longer than the "
                                                  "most --buffer auto queues (2 s)"),
    ("defaults:\n  layer: [17, x]\n", "set.yaml line 2: layer needs a whole number, got 'x'"),
    ("defaults:\n  temprature: 1\n", "set.yaml line 2: unknown key 'temprature' in defaults (known: prompt"),
    ("osc: [1, 2]\n", "set.yaml line 1: osc must be a mapping"),
    ("osc: {port: 1\n", "set.yaml line 2: YAML syntax error"),
])
def test_errors_name_the_key_and_line(text: str, expected: str) -> None:
    assert _error(text).startswith(expected)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(MusicsteerError, match="^config file not found: "):
        load_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(MusicsteerError, match="empty.yaml: config file is empty"):
        load_config(empty)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MusicsteerError, match="^config file .*binary.yaml is not UTF-8 text$"):
        load_config(binary)


def test_empty_sections_are_harmless() -> None:
    config = parse_config("midi:\n  port: 1\n  mappings:\n")
    assert config.midi is not None and config.midi.port == 1 and config.midi.mappings == ()
    assert config.midi.output is None  # no feedback unless asked for
    assert config.osc is None and config.presets == {} and config.defaults == {}


def test_midi_output_for_feedback() -> None:
    config = parse_config("midi:\n  port: nanoKONTROL2\n  output: 2\n")
    assert config.midi is not None and (config.midi.port, config.midi.output) == ("nanoKONTROL2", 2)
    config = parse_config("midi:\n  output: X-Touch\n")
    assert config.midi is not None and (config.midi.port, config.midi.output) == (None, "X-Touch")


def test_unknown_vector_names_are_refused_with_their_line() -> None:
    config = parse_config(FULL, source="set.yaml")
    with pytest.raises(MusicsteerError) as info:
        check_vector_names(config, ("classical", "electronic", "rock"))
    assert str(info.value) == ("set.yaml line 13: unknown vector 'jazz'; "
                               "the vectors file has: classical, electronic, rock")


# -- MIDI learn writes configs --------------------------------------------------------------------------------------

def test_midi_learn_writes_a_config_load_config_accepts(tmp_path: Path) -> None:
    learn = MidiLearn(parse_knob_targets("alpha,guidance,layer=14:22"), ["classical", "electronic"])
    assert learn.armed == "alpha" and "alpha" in learn.prompt()
    stream = [note(36), cc(16, 3), cc(16, 9), cc(16, 20), cc(17, 64, channel=2), cc(16, 30), cc(18, 1),
              cc(16, 100), cc(18, 127), note(40, velocity=0), note(40, channel=10), mido.Message("note_off", note=40),
              note(40, channel=10), cc(32, 0), cc(32, 127)]
    done = [learn.feed(msg) for msg in stream]
    assert done[-1] and not any(done[:-1]) and learn.done and learn.armed is None
    assert learn.last == "vector electronic <- button CC 32 on channel 1"
    path = tmp_path / "learned.yaml"
    path.write_text(learn.to_yaml("nanoKONTROL2"))
    config = load_config(path)
    assert config.midi is not None and config.midi.port == "nanoKONTROL2"
    assert config.midi.mappings == (
        KnobMapping(16, 1, "alpha", 0.0, 1.0, "linear", "pickup", None, 6),
        KnobMapping(17, 2, "guidance", 1.0, 8.0, "exp", "pickup", None, 7),
        KnobMapping(18, 1, "layer", 14.0, 22.0, "linear", "pickup", None, 8),
        TriggerMapping("steer", {"classical": 1.0}, note=40, channel=10, line=9),
        TriggerMapping("steer", {"electronic": 1.0}, cc=32, channel=1, line=10),
    )


def test_midi_learn_skip_and_targets() -> None:
    learn = MidiLearn([KnobTarget("alpha", 0.0, 1.0, "linear")], ["jazz"])
    assert not learn.skip() and learn.armed == "vector jazz"
    assert learn.feed(note(50))
    assert learn.skipped == ["alpha"] and learn.mappings == [{"note": 50, "channel": 1, "steer": "jazz"}]
    assert parse_knob_targets("temperature=0.3:3:exp") == [KnobTarget("temperature", 0.3, 3.0, "exp")]
    for text, message in [("volume", "cannot learn 'volume'"), ("layer", "layer has no default range"),
                          ("alpha=1", "bad range in 'alpha=1'"), ("guidance=0:8:exp", "bad range for guidance")]:
        with pytest.raises(MusicsteerError, match=message):
            parse_knob_targets(text)
