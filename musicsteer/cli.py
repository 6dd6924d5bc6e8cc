"""The `musicsteer` command: one sub-command per job, each in musicsteer/commands/.

A user-caused failure (MusicsteerError) is printed as one line and exits 2; a performer never sees
a traceback for a bad file name or a typo.
"""

from __future__ import annotations

import argparse
import os
import sys

from musicsteer import __version__
from musicsteer.commands import bench, devices, eval, midi_learn, play, probe, render
from musicsteer.engine.errors import MusicsteerError

COMMANDS = (render, play, devices, midi_learn, probe, eval, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicsteer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"musicsteer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers prints advisory warnings (e.g. about generation flags) that are noise to a performer.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MusicsteerError as err:
        print(f"musicsteer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("musicsteer: interrupted", file=sys.stderr)
        return 130
