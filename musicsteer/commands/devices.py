"""`musicsteer devices`: the output devices `play --output-device` accepts."""

from __future__ import annotations

import argparse

from musicsteer.engine.audio_out import list_output_devices


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("devices", help="list audio output devices")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print("audio outputs (play --output-device NAME|INDEX):")
    for device in list_output_devices():
        if device["name"] == "null":
            print("  null  no sound card: consumed by a real-time clock")
            continue
        print(f"  {device['index']:>4}  {device['name']}  ({device['host_api']}, "
              f"{device['max_output_channels']} ch, {device['default_samplerate']:.0f} Hz)")
    return 0
