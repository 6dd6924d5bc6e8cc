"""`musicsteer midi-learn`: bind a controller's knobs and pads by moving them, write a `midi:` config
(the procedure: controllers/midi_learn.py)."""

from __future__ import annotations

import argparse
import queue
import re
import time
from typing import TYPE_CHECKING

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.params import check_text

from .options import bounded

if TYPE_CHECKING:
    from musicsteer.controllers.midi_learn import MidiLearn


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("midi-learn", help="bind MIDI knobs and pads by moving them; write a config",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--port", help="MIDI input: name, part of a name, or index (see --list)")
    parser.add_argument("--params", default="", help="knobs to learn, in order: alpha,guidance,temperature "
                        "(NAME=MIN:MAX[:CURVE] sets a range; layer needs one)")
    parser.add_argument("--notes", default="", help="vector names to bind pads/buttons to: classical,electronic")
    parser.add_argument("--out", help="YAML file to write (a midi: section for --config)")
    parser.add_argument("--timeout", type=bounded(float, 0.1, 3600), default=30.0,
                        help="seconds to wait for each control")
    parser.add_argument("--api", choices=("alsa", "jack"), help="MIDI system (default: rtmidi's choice)")
    parser.add_argument("--list", action="store_true", help="list MIDI inputs and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from musicsteer.controllers.midi import list_midi_inputs, open_midi_input, resolve_midi_port
    from musicsteer.controllers.midi_learn import MidiLearn, parse_knob_targets
    from musicsteer.engine.files import writable_file
    from musicsteer.engine.vectors import check_label

    if args.list:
        names = list_midi_inputs(args.api)
        print("MIDI inputs (midi-learn --port / play --midi NAME|INDEX):" if names else "no MIDI inputs")
        for index, name in enumerate(names):
            print(f"  {index:>3}  {name}")
        return 0
    if not args.port or not args.out:
        raise MusicsteerError("midi-learn needs --port and --out (use --list to see the MIDI inputs)")
    check_text("--port", args.port, 200)  # (a name that is not UTF-8 must not reach the file written)
    names = [check_label(name.strip(), "a vector name in --notes") for name in args.notes.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise MusicsteerError("--notes lists a vector twice")
    learn = MidiLearn(parse_knob_targets(args.params), names)
    if learn.done:
        raise MusicsteerError("nothing to learn: give --params (knobs) and/or --notes (vector names)")
    out = writable_file(args.out, "--out")  # fail before the performer has turned every knob
    name = resolve_midi_port(args.port, args.api)
    messages: queue.SimpleQueue = queue.SimpleQueue()
    port = open_midi_input(name, messages.put, args.api)
    print(f"listening on {name!r}", flush=True)
    try:
        _learn(learn, messages, args.timeout)
    finally:
        port.close()
    if not learn.mappings:
        raise MusicsteerError(f"nothing learned: no control on {name!r} moved within {args.timeout:g} s each "
                              "(is it the right port? see midi-learn --list)")
    out.write_text(learn.to_yaml(_port_for_file(args.port, name)), encoding="utf-8")
    skipped = f"; skipped {', '.join(learn.skipped)}" if learn.skipped else ""
    print(f"wrote {out}: {len(learn.mappings)} mappings{skipped}; use it with play --config {out}")
    return 0


def _learn(learn: MidiLearn, messages: queue.SimpleQueue, timeout: float) -> None:
    while not learn.done:
        armed, pending = learn.armed, len(learn.queue)
        print(f"{learn.prompt()} ({timeout:g} s)", flush=True)
        deadline = time.monotonic() + timeout
        while len(learn.queue) == pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                print(f"  nothing moved within {timeout:g} s: {armed} skipped", flush=True)
                learn.skip()
                break
            try:
                learn.feed(messages.get(timeout=remaining))
            except queue.Empty:
                continue
        else:
            print(f"  {learn.last}", flush=True)


def _port_for_file(spec: str, name: str) -> str:
    """What to write as `port:`: the performer's own words, unless they gave an index (which can
    change when devices are plugged in); ALSA's trailing client:port numbers change too, so drop them."""
    return re.sub(r"\s+\d+:\d+$", "", name) if spec.strip().isdigit() else spec
