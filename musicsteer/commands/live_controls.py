"""Wiring the controllers (OSC, MIDI, a YAML config) to a live session, for `musicsteer play`."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING

from musicsteer.engine.errors import MusicsteerError, one_line

from .options import add_params

if TYPE_CHECKING:
    from musicsteer.controllers.config import SessionConfig
    from musicsteer.controllers.mappings import KnobMapping, TriggerMapping
    from musicsteer.controllers.osc import OscServer
    from musicsteer.engine.session import StreamingSession


def add_control_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live control")
    add_params(group, "osc_port")
    group.add_argument("--osc-host", help="address to listen on (default 127.0.0.1: this machine only; beyond "
                                          "it, anyone who reaches the port can steer and record: see --osc-allow)")
    group.add_argument("--osc-allow", help="senders OSC accepts, as IPs or networks: '192.168.1.20,10.0.0.0/24' "
                                           "(default: a config's osc: allow, else every sender that reaches it)")
    group.add_argument("--no-osc", action="store_true", help="do not listen for OSC")
    group.add_argument("--midi", help="MIDI input port: name (or part of it) or index")
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
    """--midi without a config: the mod wheel (CC 1) is alpha, CC 7 guidance, and the keys from middle C
    up select the vectors in file order."""
    from musicsteer.controllers.mappings import KnobMapping, TriggerMapping

    knobs = [KnobMapping(cc=1, channel=None, param="alpha", low=0.0, high=1.0),
             KnobMapping(cc=7, channel=None, param="guidance", low=1.0, high=8.0, curve="exp")]
    return knobs + [TriggerMapping(action="steer", target={label: 1.0}, note=60 + i) for i, label in enumerate(labels)]


def open_controllers(stack: ExitStack, session: StreamingSession, args: argparse.Namespace,
                     config: SessionConfig | None) -> OscServer | None:
    """Bind OSC and open MIDI before generation starts (a busy port or a missing device fails at once);
    `stack` stops them when the session ends."""
    from musicsteer.controllers.config import check_vector_names
    from musicsteer.controllers.midi import MidiInput, MidiMapper, values_reader
    from musicsteer.controllers.osc import OscServer

    vectors = session.gen.vectors
    if config is not None and vectors is not None:
        check_vector_names(config, vectors.labels)
    for preset in config.presets.values() if config is not None else ():
        try:  # what only the model and the rule can say (a layer it lacks, alpha <= -1 under renorm): now
            for change in preset.changes():
                session.control.check(change, live=False)
        except MusicsteerError as err:
            raise type(err)(f"{config.source} line {preset.line}: preset {preset.name!r}: {err}") from None
    osc = None
    if not args.no_osc:
        osc_config = config.osc if config is not None and config.osc is not None else None
        host = args.osc_host or (osc_config.host if osc_config else "127.0.0.1")
        allow = [a for a in args.osc_allow.split(",") if a.strip()] if args.osc_allow is not None else \
            (list(osc_config.allow) if osc_config and osc_config.allow else None)
        if allow == []:
            raise MusicsteerError("--osc-allow needs at least one IP or network (without it, every sender is let in)")
        osc = OscServer(session, host, args.osc_port, allow=allow,
                        status_interval=osc_config.status_interval if osc_config else 1.0)
        if allow is None and not _loopback(host):
            print(f"musicsteer: warning: OSC listens on {one_line(host, 60)}: anyone who can reach port "
                  f"{osc.address[1]} can steer this session and write recordings; name the senders with --osc-allow",
                  file=sys.stderr)
        osc.start()
        stack.callback(osc.stop)
    midi_config = config.midi if config is not None else None
    port = args.midi if args.midi is not None else (midi_config.port if midi_config else None)
    if port is not None:
        labels = vectors.labels if vectors is not None else []
        mappings = list(midi_config.mappings) if midi_config and midi_config.mappings else default_midi_mappings(labels)
        mapper = MidiMapper(mappings, config.presets if config else None, values_reader(session.control))
        midi = MidiInput(session.control, int(port) if str(port).isdigit() else port, mapper,
                         midi_config.api if midi_config else None)
        midi.start()
        stack.callback(midi.stop)
    return osc


def _loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
