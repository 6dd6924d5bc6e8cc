"""Wiring the controllers (OSC, MIDI, the browser page, presets, a YAML config) to a live session, for
`musicsteer play`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING

from musicsteer.engine.errors import MusicsteerError, one_line, printable
from musicsteer.engine.params import PARAMS

from .options import add_params

if TYPE_CHECKING:
    from musicsteer.controllers.config import SessionConfig
    from musicsteer.controllers.mappings import KnobMapping, TriggerMapping
    from musicsteer.controllers.presets import PresetBank
    from musicsteer.engine.session import StreamingSession


def add_control_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live control")
    add_params(group, "osc_port")
    group.add_argument("--osc-host", help="address to listen on (default 127.0.0.1: this machine only; beyond "
                                          "it, anyone who reaches the port can steer and record: see --osc-allow)")
    group.add_argument("--osc-allow", help="senders OSC accepts, as IPs or networks: '192.168.1.20,10.0.0.0/24' "
                                           "(default: a config's osc: allow, else every sender that reaches it)")
    group.add_argument("--osc-feedback", help="HOST:PORT[,HOST:PORT…]: surfaces told every applied value on its "
                                              "own address (e.g. Open Stage Control's or TouchOSC's OSC port)")
    group.add_argument("--no-osc", action="store_true", help="do not listen for OSC")
    group.add_argument("--midi", help="MIDI input port: name (or part of it) or index")
    group.add_argument("--midi-out", help="MIDI output port for feedback (LED rings, motor faders, button lights), "
                                          "from the same mappings as the input")
    group.add_argument("--oscquery", metavar="PORT", help="describe the OSC address space over HTTP on PORT (0 = any "
                                                          "free port) and announce it with zeroconf")
    group.add_argument("--web", metavar="[HOST:]PORT", help="serve the browser control surface (HOST 127.0.0.1 "
                                                            "unless given; beyond it, a token is printed: see README)")
    group.add_argument("--presets", help="YAML file of presets: read at start if it exists; presets saved live "
                                         "(page, OSC) are written to it")
    group.add_argument("--config", help="YAML config: OSC/MIDI mappings, presets, defaults")


def load_session_config(args: argparse.Namespace) -> tuple[SessionConfig | None, dict]:
    """Load --config; also the values it gives for flags (`defaults:`, and `osc: port`), which fill the
    flags the command line did not give (options.resolve: presence decides, not equality)."""
    from musicsteer.controllers.config import load_config

    if not args.config:
        return None, {}
    config = load_config(args.config)
    return config, {**config.defaults, **({"osc_port": config.osc.port} if config.osc else {})}


def default_midi_mappings(labels: list[str]) -> list[KnobMapping | TriggerMapping]:
    """--midi without a config: the mod wheel (CC 1) is alpha, CC 7 guidance (each over its row's span and
    curve in the parameter table), and the keys from middle C up select the vectors in file order."""
    from musicsteer.controllers.mappings import KnobMapping, TriggerMapping, default_range

    knobs = [KnobMapping(cc, None, param, *default_range(param)) for cc, param in ((1, "alpha"), (7, "guidance"))]
    return knobs + [TriggerMapping(action="steer", target={label: 1.0}, note=60 + i) for i, label in enumerate(labels)]


def check_control_flags(args: argparse.Namespace) -> None:
    """The live-control flags' syntax, before the model loads: a typo is one line at once (exit 2)."""
    from musicsteer.controllers.addresses import host_port

    if args.web is not None:
        host_port(args.web, "--web")
    for target in (args.osc_feedback or "").split(","):
        if target.strip():
            host_port(target, "--osc-feedback")
    if args.oscquery is not None:
        PARAMS["osc_port"].named("--oscquery").parse(args.oscquery)
    for flag in ("presets", "midi_out", "web", "osc_feedback"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise MusicsteerError(f"--{flag.replace('_', '-')} needs a value (it was empty)")


def open_controllers(stack: ExitStack, session: StreamingSession, args: argparse.Namespace,
                     config: SessionConfig | None) -> list[str]:
    """Bind OSC and the web page and open MIDI before generation starts (a busy port or a missing device
    fails at once, one line); `stack` stops them when the session ends. Returns lines for the performer."""
    from musicsteer.controllers.config import check_vector_names

    if config is not None and session.gen.vectors is not None:
        check_vector_names(config, session.gen.vectors.labels)
    _descriptors()
    bank = _presets(stack, session, args, config)
    told = _osc(stack, session, args, config, bank)
    if args.web is not None:
        from musicsteer.controllers.addresses import host_port
        from musicsteer.controllers.web import WebSurface

        web = WebSurface(session, *host_port(args.web, "--web"), presets=bank)
        stack.callback(web.stop)
        web.start()
        told.append(f"control surface: {web.url}")
    return told + _midi(stack, session, args, config, bank)


def _descriptors() -> None:
    """Raise the soft limit on open descriptors to the hard one (often 1,024 of 524,288): what peers may
    hold is capped far below either (web_connections.MAX_CONNECTIONS, oscquery.MAX_CLIENTS, web.MAX_PAGES),
    and the rest is the session's own: a take's WAV and log, a MIDI port reopened, the page's files."""
    try:
        import resource
    except ImportError:  # (not on Windows: its limit is another)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):  # a limit we may not raise: the caps still hold
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _presets(stack: ExitStack, session: StreamingSession, args: argparse.Namespace,
             config: SessionConfig | None) -> PresetBank:
    """The session's presets: the config's, then the --presets file's, each checked against this model now."""
    from musicsteer.controllers.presets import PresetBank, load_presets
    from musicsteer.engine.files import writable_file

    sources = [(config.source, config.presets)] if config is not None else []
    if args.presets:
        writable_file(args.presets, "--presets")
        sources.append((args.presets, load_presets(args.presets)))
    for source, presets in sources:
        for preset in presets.values():
            try:  # what only the model and the rule can say (a layer it lacks, alpha <= -1 under renorm): now
                for change in preset.changes():
                    session.control.check(change, live=False)
            except MusicsteerError as err:
                raise type(err)(f"{source} line {preset.line}: preset {preset.name!r}: {err}") from None
    bank = PresetBank(session.control, {name: p for _, presets in sources for name, p in presets.items()},
                      args.presets, session.notify)
    stack.callback(bank.close)  # (after the surfaces that save into it have stopped: the stack unwinds in reverse)
    return bank


def _osc(stack: ExitStack, session: StreamingSession, args: argparse.Namespace, config: SessionConfig | None,
         bank: PresetBank) -> list[str]:
    from musicsteer.controllers.addresses import host_port, is_loopback
    from musicsteer.controllers.osc import OscServer

    if args.no_osc:  # (its flags were refused with it: options.refuse_idle)
        if config is not None and config.osc is not None:
            print(f"musicsteer: warning: --no-osc: the osc: section of {printable(config.source)} is not used",
                  file=sys.stderr)
        return []
    osc_config = config.osc if config is not None and config.osc is not None else None
    host = args.osc_host or (osc_config.host if osc_config else "127.0.0.1")
    allow = [a for a in args.osc_allow.split(",") if a.strip()] if args.osc_allow is not None else \
        (list(osc_config.allow) if osc_config and osc_config.allow else None)
    if allow == []:
        raise MusicsteerError("--osc-allow needs at least one IP or network (without it, every sender is let in)")
    feedback = [host_port(t, "--osc-feedback") for t in (args.osc_feedback or "").split(",") if t.strip()]
    osc = OscServer(session, host, args.osc_port, allow=allow, feedback=feedback, presets=bank,
                    status_interval=osc_config.status_interval if osc_config else 1.0)
    if allow is None and not is_loopback(host):
        print(f"musicsteer: warning: OSC listens on {one_line(host, 60)}: anyone who can reach port "
              f"{osc.address[1]} can steer this session and write recordings; name the senders with --osc-allow",
              file=sys.stderr)
    osc.start()
    stack.callback(osc.stop)
    told = [f"listening for OSC on {osc.address[0]}:{osc.address[1]}"]
    if args.oscquery is not None:  # the address space for surfaces that discover it (zeroconf, then HTTP)
        from musicsteer.controllers.feedback import current_values
        from musicsteer.controllers.oscquery import OscQueryService

        port = PARAMS["osc_port"].named("--oscquery").parse(args.oscquery)
        query = OscQueryService(osc.address, osc.address[0], port, lambda: current_values(session.control.values))
        stack.callback(query.stop)
        query.start()
        told.append(f"OSCQuery on http://{query.address[0]}:{query.address[1]}/ (announcing it with zeroconf)")
    return told


def _midi(stack: ExitStack, session: StreamingSession, args: argparse.Namespace, config: SessionConfig | None,
          bank: PresetBank) -> list[str]:
    from musicsteer.controllers.mappings import KnobMapping
    from musicsteer.controllers.midi import MidiInput, MidiMapper, values_reader
    from musicsteer.engine.events import Change
    from musicsteer.engine.params import LIVE

    midi_config = config.midi if config is not None else None
    labels = session.gen.vectors.labels if session.gen.vectors is not None else []
    mappings = list(midi_config.mappings) if midi_config and midi_config.mappings else default_midi_mappings(labels)
    api = midi_config.api if midi_config else None
    port = args.midi if args.midi is not None else (midi_config.port if midi_config else None)
    out = args.midi_out if args.midi_out is not None else (midi_config.output if midi_config else None)
    if port is None and out is None:
        return []
    source = config.source if config is not None else "--midi"
    for m in mappings:  # both ends of a knob, judged now by what only the model and the rule can say
        if isinstance(m, KnobMapping) and m.param in LIVE:
            for end in (m.low, m.high):
                value = round(end) if LIVE[m.param].kind == "whole" else end
                try:
                    session.control.check(Change(m.param, value), live=False)
                except MusicsteerError as err:
                    raise type(err)(f"{source} line {m.line}: the {m.param} knob on CC {m.cc} reaches {end:g}: "
                                    f"{err}") from None
    told = []
    if port is not None:
        mapper = MidiMapper(mappings, bank.presets, values_reader(session.control))
        midi = MidiInput(session.control, int(port) if str(port).isdigit() else port, mapper, api, session.notify)
        midi.start()
        stack.callback(midi.stop)
    if out is not None:  # values back to the controller's LEDs and motor faders, from the same mappings
        from musicsteer.controllers.feedback import current_values
        from musicsteer.controllers.midi_feedback import MidiFeedback

        feedback = MidiFeedback(mappings, bank.presets, int(out) if str(out).isdigit() else out, api,
                                lambda: current_values(session.control.values), notify=session.notify)
        session.listeners.add(feedback.on_event)  # before start(): no change is missed
        stack.callback(session.listeners.remove, feedback.on_event)
        feedback.start()
        stack.callback(feedback.stop)
        told.append(f"MIDI feedback to {feedback.port_name}")
    return told
