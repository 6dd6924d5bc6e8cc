"""The `musicsteer` command: one sub-command per job, each in musicsteer/commands/.

A user-caused failure (MusicsteerError, or a bad flag) is printed as one line and exits 2; a
performer never sees a traceback for a bad file name or a typo, nor for Ctrl-C at any moment.
Parsers are built from light modules (the parameter table, argparse): `--version`, `--help` and
argument errors answer before torch or transformers are imported; a command imports them to run.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from musicsteer.commands.options import Parser

COMMANDS = ("render", "play", "devices", "midi_learn", "probe", "eval", "bench", "toy")


def build_parser() -> Parser:
    # Imported here, inside main's guard: a Ctrl-C while Python loads even these is one line too.
    import importlib

    from musicsteer.commands.options import Parser
    from musicsteer.engine import __version__

    parser = Parser(prog="musicsteer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"musicsteer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"musicsteer.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        from musicsteer.engine.errors import MusicsteerError, one_line  # (plain classes: nothing to wait for)
    except KeyboardInterrupt:  # Ctrl-C in the first milliseconds, while even this imports
        print("musicsteer: interrupted", file=sys.stderr)
        return 130
    try:
        # transformers prints advisory warnings (e.g. about generation flags) that are noise to a performer.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except MusicsteerError as err:
        print(f"musicsteer: error: {one_line(err, 2000)}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the system refuses (name too long, permissions) wherever it is first used
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"musicsteer: error: {one_line(f'{err.strerror or err}{where}', 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # also while a command imports torch, before any handler of its own
        print("musicsteer: interrupted", file=sys.stderr)
        return 130
    except Exception:
        # Ctrl-C inside a C extension's import (numpy's, under transformers' lazy loader) surfaces as another
        # error (AttributeError -> ModuleNotFoundError, seen in CI): the signal, not that error, is what happened.
        if _INTERRUPTED:
            print("musicsteer: interrupted", file=sys.stderr)
            return 130
        raise


def entry() -> None:
    """The console script: `main`, then exit. After Ctrl-C the process ends at once, with 130: a
    library interrupted halfway through its import (torch, transformers) may leave teardown work that
    the interpreter's exit would run and interrupt again (seen here: killed by SIGINT, no exit code)."""
    import signal

    # SIGTERM before a command installs its own handler (play's stops the session cleanly) ends the
    # process as Ctrl-C does: one line, exit 130, never a silent kill halfway through start-up.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # Python's own behaviour, remembered (see main)
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


_INTERRUPTED: list[int] = []  # the signals received before a command installed its own handlers


def _interrupt(signum: int, frame: object) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt
