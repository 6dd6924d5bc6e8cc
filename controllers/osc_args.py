"""OSC arguments <-> engine values: what a message on a parameter's address asks for, and how a value
goes back out as OSC arguments (controllers/osc.py's server uses both).

In: numbers as OSC i, h, f or d (never r, m, T/F…: a colour is not a strength), text as s; `change`
builds the `Change` a message asks for (the parameter table checks it on submit); `take_name` reads
record/start's optional name. Out: `scalar` makes a value one argument, `typed` picks an argument's
OSC type so that echoing a hostile value never fails, and `address` shows a message's address in a
reply.
"""

from __future__ import annotations

from typing import Any

from musicsteer.engine.errors import BadType, shown
from musicsteer.engine.events import Change
from musicsteer.engine.params import Param

from .osc_packet import Message

NUMBER_TAGS = "ifdh"


def address(message: Message) -> str:
    """The message's address for a reply: printable and short, whatever was sent."""
    return ascii(message.address[:60])[1:-1]


def numbers(row: Param, message: Message, most: int) -> list[Any]:
    """The message's arguments, which must be 1..most OSC numbers (i, h, f, d)."""
    if not 1 <= len(message.args) <= most or any(tag not in NUMBER_TAGS for tag in message.tags):
        wanted = (f"a number (and optionally {row.glide[1]} seconds)" if row.glide else
                  f"1 to {most} whole numbers" if most > 1 else "one number")
        got = f"OSC types {message.tags!r}" if message.tags else "no arguments"
        raise BadType(f"{row.name} needs {wanted}, got {got}")
    return list(message.args)


def text(what: str, message: Message) -> str:
    """The message's one argument, which must be an OSC string (s); `what` names it in the refusal."""
    if message.tags != "s":
        raise BadType(f"{what} needs one string, got OSC types {message.tags!r}")
    return message.args[0]


def pairs(message: Message, tags: str, args: tuple) -> dict[str, Any]:
    """Name/weight pairs (s f …) from `args` (typed by `tags`, a slice of the message's) as a mix."""
    if not args or len(args) % 2 or any(t != "s" for t in tags[::2]) or any(t not in NUMBER_TAGS for t in tags[1::2]):
        raise BadType(f"needs name/weight pairs (s f …), got OSC types {message.tags!r}")
    if len(set(args[::2])) != len(args) // 2:
        raise BadType("a mix names a vector twice")
    return dict(zip(args[::2], args[1::2], strict=True))  # weights are checked by the table


def change(row: Param, address: str, message: Message) -> Change:
    """The Change one message on a parameter's address asks for (checked by the table on submit)."""
    if row.kind in ("number", "whole"):
        args = numbers(row, message, 2 if row.glide else row.size or 1)
        if row.glide:
            return Change(row.name, *args)
        return Change(row.name, tuple(args) if row.many else args[0])
    if row.kind != "mix":
        return Change(row.name, text(row.name, message))
    tags, args = message.tags, message.args
    if address == "steer":
        return Change("mix", {text("steer", message): 1.0})
    if address == "morph":  # name seconds | pairs seconds
        if len(args) < 2 or tags[-1] not in NUMBER_TAGS:
            raise BadType(f"morph needs a name (or name/weight pairs) then seconds, got OSC types {tags!r}")
        mix = {args[0]: 1.0} if tags == "s" + tags[-1] else pairs(message, tags[:-1], args[:-1])
        return Change("mix", mix, args[-1])
    cut = len(args) // 2 * 2  # mix: pairs [seconds]
    return Change("mix", pairs(message, tags[:cut], args[:cut]), args[cut] if len(args) > cut else 0.0)


def released(message: Message) -> bool:
    """A button's release: numbers (or F) only, all 0. TouchOSC and Open Stage Control buttons send 1 on
    press and 0 on release; record/start acts on the press only, or each press would make two takes."""
    return bool(message.args) and all(tag in NUMBER_TAGS + "TF" for tag in message.tags) and not any(message.args)


def status_reply(message: Message) -> bool:
    """A /musicsteer/status that is an engine's answer (key value … pairs: a text first), not a request
    (no arguments, or a button's number)."""
    return message.address == "/musicsteer/status" and message.tags[:1] == "s"


def take_name(message: Message) -> str | None:
    """record/start's name: one string, or none (a button's number, or no argument: a new take)."""
    if not message.args or all(tag in NUMBER_TAGS + "TF" for tag in message.tags):
        return None
    return text("record/start", message)


def values(value: Any) -> list[Any]:
    """A value as the arguments its input form takes: a mix as name/weight pairs, layers one each."""
    if isinstance(value, dict):
        return [x for pair in value.items() for x in pair]
    return list(value) if isinstance(value, tuple | list) else [value]


def status(status: dict[str, Any]) -> list[Any]:
    """/musicsteer/status's arguments: string keys each followed by one value (the session's status,
    `refused.KIND` per kind, `layer` the first steered layer and `layers` all as text), `mix` LAST
    with its name/weight pairs to the end."""
    args = [x for key, value in status.items() if isinstance(value, str | int | float) for x in (key, value)]
    args += [x for kind, n in sorted(status.get("refusals", {}).items()) for x in (f"refused.{kind}", n)]
    layers = status.get("layers") or []
    args += ["layer", int(layers[0]), "layers", ",".join(map(str, layers))] if layers else []
    return [*args, "mix", *(x for name, w in (status.get("mix") or {}).items() for x in (name, float(w)))]


def scalar(value: Any) -> Any:
    """A value as one OSC argument: one layer as its number, a mix or several layers as bounded text."""
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    return shown(value) if isinstance(value, dict | tuple | list) else value


def typed(arg: Any) -> tuple[Any, str | None]:
    """An argument and its OSC type: python-osc's choice (i/h by size, f, s, T/F), but a float beyond
    float32 goes as a double and an int beyond int64 as text, so echoing a hostile value never fails."""
    if isinstance(arg, float) and abs(arg) > 3.4e38 and arg == arg:
        return arg, "d"
    if isinstance(arg, int) and not isinstance(arg, bool) and not -(2**63) <= arg < 2**63:
        return shown(arg, 40), "s"
    if not isinstance(arg, int | float | str | bytes):  # a time tag, a MIDI message, a colour: echoed as text
        return shown(arg, 40), "s"
    return arg, None
