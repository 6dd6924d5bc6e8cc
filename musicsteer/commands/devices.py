"""`musicsteer devices`: the output devices `play --output-device` accepts and the MIDI inputs `--midi` accepts.

A listing never fails for a missing system library: without PortAudio it still lists `null` (and says
what to install), without a MIDI backend it still lists the audio outputs (and says why MIDI is off).
"""

from __future__ import annotations

import argparse

from musicsteer.engine.errors import MusicsteerError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("devices", help="list audio outputs and MIDI inputs")
    parser.add_argument("--midi-api", choices=("alsa", "jack"), help="MIDI system to ask (default: rtmidi's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from musicsteer.controllers.midi import list_midi_inputs
    from musicsteer.engine.audio_devices import list_output_devices, null_output_device

    print("audio outputs (play --output-device NAME|INDEX):")
    try:
        outputs, problem = list_output_devices(), None
    except MusicsteerError as err:  # no PortAudio: the null device still plays; say what to install
        outputs, problem = [null_output_device()], err
    for device in outputs:
        if device["name"] == "null":
            print("  null  no sound card: consumed by a real-time clock")
            continue
        print(f"  {device['index']:>4}  {device['name']}  ({device['host_api']}, "
              f"{device['max_output_channels']} ch, {device['default_samplerate']:.0f} Hz)")
    if problem is not None:
        print(f"  sound cards unavailable: {problem}")
    print("MIDI inputs (play --midi NAME|INDEX):")
    try:
        inputs = list_midi_inputs(args.midi_api)
    except MusicsteerError as err:  # no MIDI system is not an error for a listing: say why there are none
        print(f"  MIDI unavailable: {err}")
        return 0
    for index, name in enumerate(inputs):
        print(f"  {index:>4}  {name}")
    if not inputs:
        print("  none")
    return 0
