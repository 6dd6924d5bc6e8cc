"""Helpers shared by the `musicsteer eval` tests (this module holds no tests).

`run_cli` runs the real `musicsteer` entry point (cli.py registers `eval`); until then it builds
the same parser around `eval.register` and handles errors exactly as cli.main does (one line, 2).
"""

from __future__ import annotations

import argparse
import sys

from musicsteer import cli
from musicsteer.commands import eval as eval_command
from musicsteer.engine.errors import MusicsteerError


def run_cli(argv: list[str]) -> int:
    """The exit status of `musicsteer ARGV`, argument errors included (the CLI's parser exits 2 on them)."""
    if "eval" in cli.COMMANDS:
        try:
            return cli.main(argv)
        except SystemExit as exit_:
            return int(exit_.code or 0)
    parser = argparse.ArgumentParser(prog="musicsteer")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_command.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MusicsteerError as err:
        print(f"musicsteer: error: {err}", file=sys.stderr)
        return 2
