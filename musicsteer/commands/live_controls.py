"""Wiring the controllers (OSC, MIDI, a YAML config) to a live session, for `musicsteer play`."""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from musicsteer.controllers.config import SessionConfig, check_vector_names, load_config
from musicsteer.controllers.midi import KnobMapping, MidiInput, MidiMapper, TriggerMapping, status_reader
from musicsteer.controllers.osc import OscServer
from musicsteer.engine.session import StreamingSession


def add_control_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live control")
    group.add_argument("--osc-port", type=int, help="OSC port (default 9000; 0 = any free port)")
    group.add_argument("--osc-host", help="address to listen on (default 127.0.0.1: this machine only)")
    group.add_argument("--no-osc", action="store_true", help="do not listen for OSC")
    group.add_argument("--midi", help="MIDI input port: name (or part of it) or index")
    group.add_argument("--config", help="YAML config: OSC/MIDI mappings, presets, defaults")


def load_session_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SessionConfig | None:
    """Load --config and fill every option the command line left at its default from its `defaults:`."""
    if not args.config:
        return None
    config = load_config(args.config)
    d = config.defaults
    from_config = {
        "prompt": d.prompt, "seed": d.seed, "guidance": d.guidance, "temperature": d.temperature,
        "top_k": d.top_k, "top_p": d.top_p, "alpha": d.alpha, "site": d.site, "buffer": d.buffer,
        "prebuffer": d.prebuffer,
        "steer": ",".join(f"{name}={weight}" for name, weight in d.steer.items()) if d.steer else None,
        "layer": ",".join(str(layer) for layer in d.layers) if d.layers else None,
    }
    for dest, value in from_config.items():
        if value is not None and getattr(args, dest) == parser.get_default(dest):
            setattr(args, dest, value)
    return config


def default_midi_mappings(labels: list[str]) -> list[KnobMapping | TriggerMapping]:
    """--midi without a config: the mod wheel (CC 1) is alpha, CC 7 guidance, and the keys from middle C
    up select the vectors in file order."""
    knobs = [KnobMapping(cc=1, channel=None, param="alpha", low=0.0, high=1.0),
             KnobMapping(cc=7, channel=None, param="guidance", low=1.0, high=8.0, curve="exp")]
    return knobs + [TriggerMapping(action="steer", target={label: 1.0}, note=60 + i) for i, label in enumerate(labels)]


def open_controllers(stack: ExitStack, session: StreamingSession, args: argparse.Namespace,
                     config: SessionConfig | None) -> OscServer | None:
    """Bind OSC and open MIDI before generation starts (a busy port or a missing device fails at once);
    `stack` stops them when the session ends."""
    vectors = session.gen.vectors
    if config is not None and vectors is not None:
        check_vector_names(config, vectors.labels)
    osc = None
    if not args.no_osc:
        osc_config = config.osc if config is not None and config.osc is not None else None
        host = args.osc_host or (osc_config.host if osc_config else "127.0.0.1")
        port = args.osc_port if args.osc_port is not None else (osc_config.port if osc_config else 9000)
        osc = OscServer(session, host, port, allow=list(osc_config.allow) if osc_config else None,
                        status_interval=osc_config.status_interval if osc_config else 1.0)
        osc.start()
        stack.callback(osc.stop)
    midi_config = config.midi if config is not None else None
    port = args.midi if args.midi is not None else (midi_config.port if midi_config else None)
    if port is not None:
        labels = vectors.labels if vectors is not None else []
        mappings = list(midi_config.mappings) if midi_config and midi_config.mappings else default_midi_mappings(labels)
        mapper = MidiMapper(mappings, config.presets if config else None, status_reader(session))
        midi = MidiInput(session, int(port) if str(port).isdigit() else port, mapper,
                         midi_config.api if midi_config else None)
        midi.start()
        stack.callback(midi.stop)
    return osc
