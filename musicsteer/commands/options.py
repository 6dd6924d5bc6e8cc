"""Command-line options, derived from the parameter table (engine/params.py), and the one-line parser.

Every flag of a table row is built here by `add_params`: its type checks the value as the row says
(a bad value is one line and exit 2, never a silent clamp), its help shows the range and default.
Flags default to None so that *presence* decides: `resolve` fills what the command line left unset
from a config's `defaults:` first, then from the table. Nothing here imports torch, so `--help`
and argument errors answer at once; the model stack is imported by the commands that run it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn

from musicsteer.engine.errors import MusicsteerError, one_line
from musicsteer.engine.params import LIVE, PARAMS, Param

DEFAULT_MODEL = "facebook/musicgen-small"


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (`musicsteer: error: …`, exit 2), like every other error.
    No abbreviated flags: `--output X` must not quietly become `--output-device X` (nor change meaning
    when a flag is added), so a flag is its whole name or an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        # Refused by the (sub-)command that met them, so the line points at its --help, not the top one's.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        print(f"musicsteer: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def flag_type(row: Param) -> Any:
    def convert(text: str) -> Any:
        try:
            return row.parse(text)
        except MusicsteerError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = row.name  # argparse names the type in its "invalid value" message
    return convert


def typed(name: str) -> Any:
    """The argparse type of table row `name`, for a flag of another name bounded the same way."""
    return flag_type(PARAMS[name])


def add_params(group: argparse._ActionsContainer, *names: str, default_note: str | None = None,
               defaults: dict[str, Any] | None = None) -> None:
    """Add the CLI flags of these table rows, typed and bounded by the table. `defaults` overrides a
    row's default for this command (eval's 10 s clips); such flags are filled by argparse, not resolve."""
    for name in names:
        row = PARAMS[name]
        if defaults and name in defaults:
            row = dataclasses.replace(row, default=defaults[name])
        unit = f" {row.unit}" if row.unit and row.kind not in ("text", "choice") else ""
        default = default_note if default_note and row.default is None else (
            "" if row.default is None else f"; default {row.default!r}" if isinstance(row.default, str)
            else f"; default {row.default:g}")
        metavar = "{" + ",".join(row.choices) + "}" if row.choices else row.name.upper()
        group.add_argument(row.cli, dest=row.dest, type=flag_type(row), metavar=metavar,
                           default=defaults.get(name) if defaults else None,
                           help=f"{row.help} ({row.describe_range(unit)}{default})".replace("%", "%%"))


def bounded(kind: type, low: float, high: float) -> Any:
    """An argparse type for a command's own count or duration (not a table row): a `kind` in [low, high]."""
    return flag_type(Param("value", "whole" if kind is int else "number", "", low=low, high=high))


def resolve(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> argparse.Namespace:
    """Fill every table flag the command line did not give: from `defaults` (a config's, already
    checked), else the table's default. A flag that was given wins, whatever its value."""
    for row in PARAMS.values():
        if row.cli and hasattr(args, row.dest) and getattr(args, row.dest) is None:
            setattr(args, row.dest, (defaults or {}).get(row.name, row.default))
    return args


# Flags that act only beside others: dest -> its requirements, each (the dests any one of which must be
# given, how to say it), all to be met. Without them nothing reads the flag, so it is refused rather than
# silently ignored (`refuse_idle`). A mix needs a vectors file; the other steering flags (the genre
# meter's easing too) need a vectors file and, where no live surface (OSC, MIDI in, the page) may set a
# mix later, a mix (play.surfaces_needs) or, in a render, a mix or an automation file (RENDER_STEERING).
Need = tuple[tuple[str, ...], str]
STEERING_FLAGS = (*(r.dest for r in LIVE.values() if r.effect == "steering" and r.dest != "steer"), "steer_rule",
                  "steer_both", "slew", "ease_at")
LIVE_STEERING: Need = ("vectors",), "--vectors FILE (nothing steers without one)"
RENDER_STEERING: Need = ("steer", "automation"), "--steer or --automation (nothing steers a render without one)"
NEEDS: dict[str, list[Need]] = {
    "steer": [LIVE_STEERING],
    **dict.fromkeys(("meter_every", "meter_layer"), [(("meter", "ease_at"), "--meter or --ease-at")]),
    "init_seconds": [(("init_audio",), "--init-audio FILE")],
}
# Flags that another one switches off: dest -> (the dest that does, how to say it).
OFF_WITH = dict.fromkeys(("osc_port", "osc_host", "osc_allow", "osc_feedback", "oscquery"),
                         ("no_osc", "OSC (drop --no-osc)"))


def refuse_idle(args: argparse.Namespace, defaults: dict[str, Any] | None = None,
                steering: tuple[Need, ...] = (LIVE_STEERING,),
                more: dict[str, list[Need]] | None = None) -> dict[str, Any]:
    """One line (MusicsteerError) for a flag given where nothing would read it: without the flags it needs
    (NEEDS, `more`; the steering flags: `steering`), or beside one that switches it off (OFF_WITH). Call
    it before `resolve` fills the defaults. A config's `defaults:` (table names) in the same case are
    dropped first, with one warning, not refused (a config serves many sessions); the flags are then
    judged by what is left. Returns the defaults left."""
    def given(dest: str) -> bool:  # on the command line
        value = getattr(args, dest, None)
        return value is not None and value is not False  # (0 is a value given: `--ease-at 0`)

    needs = {**NEEDS, **dict.fromkeys(STEERING_FLAGS, list(steering)), **(more or {})}
    kept = {PARAMS[name].dest if name in PARAMS else name: name for name in defaults or {}}  # dest -> name

    def unmet(dest: str) -> str | None:  # the first requirement of `dest` nothing meets, worded
        have = [n for n in needs.get(dest, []) if not any(given(d) or d in kept for d in n[0])]
        return have[0][1] if have else None

    idle: dict[str, list[str]] = {}  # what is missing -> the config's defaults that need it
    while idle_now := [(dest, why) for dest in kept if not given(dest) and (why := unmet(dest))]:
        for dest, why in idle_now:  # until none is left idle by one dropped (a mix takes its alpha along)
            idle.setdefault(why, []).append(kept.pop(dest))
    for dest in needs:
        if given(dest) and (why := unmet(dest)):
            raise MusicsteerError(f"--{dest.replace('_', '-')} needs {why}")
    for dest, (off, wording) in OFF_WITH.items():  # (the flag wins over a config: `--no-osc` over its osc:)
        if given(dest) and given(off):
            raise MusicsteerError(f"--{dest.replace('_', '-')} needs {wording}")
    if idle:
        told = "; ".join(f"{', '.join(names)} need{'s' * (len(names) == 1)} {what}" for what, names in idle.items())
        print(f"musicsteer: warning: the config's defaults do nothing in this session: {told}", file=sys.stderr)
    return {name: value for name, value in (defaults or {}).items() if name in kept.values()}


def vectors_path(text: str) -> str:
    """--vectors' type: a file, or `toy` / `toy:instrument`, the shipped toy's vectors, resolved to their file
    here, so that sessions, logs and replays see a file like any other (musicsteer/toy/shipped.py)."""
    from musicsteer.toy.shipped import vectors_file  # (no torch)

    try:
        return vectors_file(text)
    except MusicsteerError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help=f"hub id, local folder, 'toy' (the small MusicGen trained by this project, shipped), "
                            f"'tiny' (offline test model) or 'random:small|medium|large' (default {DEFAULT_MODEL})")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", help="float32 (default; a replay: the session's), bfloat16 or float16")
    add_params(group, "quantize", "threads", "decode")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    # The live rows by what they act on (params.EFFECTS): a new row gets its flag here without an edit.
    add_params(parser.add_argument_group("generation"), *(r.name for r in LIVE.values() if r.effect != "steering"))
    group = parser.add_argument_group("steering")
    group.add_argument("--vectors", type=vectors_path, metavar="FILE",
                       help="steering-vectors file (.safetensors), or toy (the toy's genre vectors; "
                            "toy:instrument, its lead-instrument vectors)")
    add_params(group, *(r.name for r in LIVE.values() if r.effect == "steering"), "steer_rule", "slew")
    group.add_argument("--steer-both", action="store_true",
                       help="steer both CFG halves (default: the conditional half only)")
    group = parser.add_argument_group("genre meter (needs --vectors)")
    group.add_argument("--meter", action="store_true", help="score the music against every vector as it plays")
    add_params(group, "meter_every", "meter_layer", "ease_at")


def add_ray_option(parser: argparse.ArgumentParser, work: str) -> None:
    """--ray [ADDRESS] (musicsteer/cluster.py): `work` on a Ray cluster's GPUs; absent: this process."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help=f"run {work} on a Ray cluster: one actor per GPU (per CPU without GPUs), results "
                             "written here. ADDRESS: host:port of the head or 'auto'; none: $RAY_ADDRESS, else "
                             "the cluster `ray start` made here, else a new local one (needs musicsteer[ray])")
