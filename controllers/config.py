"""A session config (`--config FILE.yaml`): OSC, MIDI mappings, named presets and engine defaults.

Top-level keys (all optional): `osc:`, `midi:`, `presets:`, `defaults:`; see examples/session.yaml and
examples/nanokontrol2.yaml. `defaults:` takes the YAML keys of the parameter table (engine/params.py),
and every value anywhere is checked by its row with the start-up rules: out of range is an error, not
a clamp. The tree is bounded before any value is built (controllers/yaml_file.py) and every mistake
is one line naming the file, the line and the key, e.g. "set.yaml line 7: unknown key 'minn' (known: …)".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import MusicsteerError, TooLarge, UnknownName, shown
from musicsteer.engine.events import Change, validate_change
from musicsteer.engine.params import GLIDE, LIVE, NAME_CHARS, PARAMS, YAML_KEYS, Param, check_stream, check_text

from .mappings import (
    ACTIONS,
    CURVES,
    KNOB_PARAMS,
    TAKEOVERS,
    KnobMapping,
    Preset,
    TriggerMapping,
    default_range,
    knob_end,
)
from .yaml_file import YamlTree, read_text

MIDI_APIS = ("alsa", "jack")
_KNOB_KEYS = ("cc", "channel", "param", "min", "max", "curve", "takeover", "from", "to")
_TRIGGER_KEYS = ("cc", "note", "channel", *ACTIONS, "seconds")
_PRESET_KEYS = ("mix", "alpha", "layer", "site", "seconds")
MAX_ITEMS = 512  # mappings, presets, allow-list entries: a bound, far above any controller
_BYTE = Param("midi", "whole", "a MIDI CC or note number", low=0, high=127)
_CHANNEL = Param("channel", "whole", "a MIDI channel as printed on hardware", low=1, high=16)


@dataclass(frozen=True)
class OscConfig:
    host: str = "127.0.0.1"
    port: int = PARAMS["osc_port"].default
    allow: tuple[str, ...] = ()  # sender addresses/networks; empty: any sender
    status_interval: float = PARAMS["status_interval"].default


@dataclass(frozen=True)
class MidiConfig:
    port: str | int | None = None  # name substring or index; None: the command line's --midi
    api: str | None = None  # alsa | jack; None: rtmidi's default
    mappings: tuple[KnobMapping | TriggerMapping, ...] = ()
    # Where feedback goes (LED rings, motor faders, lights; controllers/midi_feedback.py): an output's
    # name substring or index; None: no feedback.
    output: str | int | None = None


@dataclass(frozen=True)
class SessionConfig:
    source: str
    osc: OscConfig | None = None
    midi: MidiConfig | None = None
    presets: dict[str, Preset] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # row name -> checked value (options.resolve)


def load_config(path: str | Path) -> SessionConfig:
    """Read and validate a session config; every failure is a one-line MusicsteerError."""
    return parse_config(read_text(path, "config file"), source=str(path))


def parse_config(text: str, source: str = "<config>") -> SessionConfig:
    return _Reader(YamlTree(text, source)).config()


def preset_changes(config: SessionConfig, name: str) -> list[Change]:
    """The validated changes that recall preset `name` (mix, alpha, then layer and site if set)."""
    if name not in config.presets:
        raise UnknownName(f"unknown preset {shown(name, 40)} (known: {', '.join(config.presets) or 'none defined'})")
    return [validate_change(change, live=False) for change in config.presets[name].changes()]


def check_vector_names(config: SessionConfig, labels: list[str] | tuple[str, ...]) -> None:
    """Refuse a config naming vectors the loaded vectors file lacks (names cannot be checked before)."""
    mappings = config.midi.mappings if config.midi else ()
    uses = [(p.line, list(p.mix)) for p in config.presets.values()]
    uses += [(m.line, list(m.target)) for m in mappings if isinstance(m, TriggerMapping) and m.action != "preset"]
    uses += [(m.line, list(m.vectors)) for m in mappings if isinstance(m, KnobMapping) and m.vectors]
    if config.defaults.get("mix"):
        uses.append((0, list(config.defaults["mix"])))
    for line, names in sorted(uses):  # report the first in file order
        for name in names:
            if name not in labels:
                where = f"{config.source} line {line}" if line else f"{config.source} defaults"
                raise UnknownName(f"{where}: unknown vector {shown(name, 40)}; the vectors file has: "
                                  f"{', '.join(labels)}")


def _text_ok(value: Any, limit: int) -> bool:
    """Whether `value` passes the one text rule (params.check_text: valid Unicode, no control character)."""
    try:
        check_text("text", value, limit)
    except MusicsteerError:
        return False
    return True


class _Reader:
    """Walks the bounded YAML tree; every check knows the line of the key it is about."""

    def __init__(self, tree: YamlTree) -> None:
        self.tree, self.source = tree, tree.source

    def fields(self, node: yaml.Node, known: tuple[str, ...], what: str
               ) -> dict[str, tuple[Any, yaml.Node, yaml.Node]]:
        """key -> (constructed value, key node, value node), refusing unknown and repeated keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.tree.fail(node, f"{what} must be a mapping of keys to values")
        out: dict[str, tuple[Any, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in known:
                raise self.tree.fail(key_node, f"unknown key {shown(key, 40)} in {what} (known: {', '.join(known)})")
            if key in out:
                raise self.tree.fail(key_node, f"key {key!r} given twice in {what}")
            out[key] = (self.tree.value(value_node), key_node, value_node)
        return out

    def value(self, fields: dict, key: str, row: Param) -> Any:
        """fields[key] read and checked by `row`'s start-up rules; errors name the key and its line."""
        return self.tree.checked(row.named(key), *fields[key])

    def choice(self, fields: dict, key: str, options: tuple[str, ...]) -> str:
        return self.value(fields, key, Param(key, "choice", key, choices=options))

    def items(self, node: yaml.Node, what: str) -> list:
        if len(node.value) > MAX_ITEMS:
            raise self.tree.fail(node, f"{what} has {len(node.value)} entries; the most is {MAX_ITEMS}", TooLarge)
        return list(node.value)

    # -- sections ---------------------------------------------------------------------------------
    def config(self) -> SessionConfig:
        root = self.tree.root
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
            raise MusicsteerError(f"{self.source}: config file is empty (expected osc:, midi:, presets:, defaults:)")
        top = self.fields(root, ("osc", "midi", "presets", "defaults"), "the config")
        nodes = {key_node.value: value_node for key_node, value_node in root.value}
        presets = self.presets(nodes["presets"]) if "presets" in top else {}
        return SessionConfig(
            source=self.source,
            osc=self.osc(nodes["osc"]) if "osc" in top else None,
            midi=self.midi(nodes["midi"], presets) if "midi" in top else None,
            presets=presets,
            defaults=self.defaults(nodes["defaults"]) if "defaults" in top else {},
        )

    def osc(self, node: yaml.Node) -> OscConfig:
        f = self.fields(node, ("host", "port", "allow", "status_interval"), "osc")
        allow = f.get("allow", ([], node))[0]
        allow = [allow] if isinstance(allow, str) else allow
        if not isinstance(allow, list) or len(allow) > MAX_ITEMS:
            raise self.tree.fail(f["allow"][1], f"'allow' needs a list of at most {MAX_ITEMS} addresses or networks")
        for entry in allow:
            try:
                ipaddress.ip_network(str(entry)[:100], strict=False)
            except ValueError:
                raise self.tree.fail(f["allow"][1], f"'allow' needs IP addresses or networks such as 192.168.1.0/24, "
                                                    f"got {shown(entry, 40)}") from None
        host = f.get("host", (OscConfig.host, node))[0]
        if not _text_ok(host, 255) or not host or any(c.isspace() for c in host):
            raise self.tree.fail(f["host"][1], f"'host' needs an address or host name such as 0.0.0.0, got "
                                               f"{shown(host, 40)}")
        return OscConfig(host=host,
                         port=self.value(f, "port", PARAMS["osc_port"]) if "port" in f else OscConfig.port,
                         allow=tuple(str(entry) for entry in allow),
                         status_interval=self.value(f, "status_interval", PARAMS["status_interval"])
                         if "status_interval" in f else OscConfig.status_interval)

    def midi(self, node: yaml.Node, presets: dict[str, Preset]) -> MidiConfig:
        f = self.fields(node, ("port", "output", "api", "mappings"), "midi")
        port, output = self.port_spec(f, "port", "input"), self.port_spec(f, "output", "output")
        mapping_node = next((v for k, v in node.value if k.value == "mappings"), None)
        items: list = []
        if mapping_node is not None and not (isinstance(mapping_node, yaml.ScalarNode) and f["mappings"][0] is None):
            if not isinstance(mapping_node, yaml.SequenceNode):  # `mappings:` left empty is harmless
                raise self.tree.fail(f["mappings"][1], "'mappings' needs a list such as - {cc: 0, param: alpha}")
            items = self.items(mapping_node, "'mappings'")
        return MidiConfig(port=port, api=self.choice(f, "api", MIDI_APIS) if "api" in f else None,
                          mappings=tuple(self.mapping(item, presets) for item in items), output=output)

    def port_spec(self, f: dict, key: str, direction: str) -> str | int | None:
        """f[key] as a MIDI port spec (a name, part of one, or an index), or None when absent."""
        port = f[key][0] if key in f else None
        if port is not None and (isinstance(port, bool) or not isinstance(port, str | int) or port == ""
                                 or isinstance(port, str) and not _text_ok(port, 200) or isinstance(port, int) and
                                 not 0 <= port <= 1000):
            raise self.tree.fail(f[key][1], f"'{key}' needs a MIDI {direction} name (or part of one) or an index, "
                                            f"got {shown(port, 40)}")
        return port

    def mapping(self, node: yaml.Node, presets: dict[str, Preset]) -> KnobMapping | TriggerMapping:
        f = self.fields(node, tuple(dict.fromkeys(_KNOB_KEYS + _TRIGGER_KEYS)), "a MIDI mapping")
        line = node.start_mark.line + 1
        sources = [k for k in ("cc", "note") if k in f]
        if len(sources) != 1:
            raise self.tree.fail(node, "a MIDI mapping needs exactly one of 'cc' or 'note'")
        number = self.value(f, sources[0], _BYTE)
        channel = self.value(f, "channel", _CHANNEL) if "channel" in f else None
        actions = [k for k in ACTIONS if k in f]
        if "param" in f and actions or len(actions) > 1:
            raise self.tree.fail(node, f"a MIDI mapping does one thing: 'param' or one of {', '.join(ACTIONS)}")
        if actions:
            self._only(f, _TRIGGER_KEYS, "a note or button")
            action = actions[0]
            if "seconds" in f and action != "morph":
                raise self.tree.fail(f["seconds"][1], "'seconds' sets a morph time, but this mapping has no morph")
            if action == "preset":
                target: str | dict[str, float] = self.value(f, "preset", Param("preset", "text", "", size=NAME_CHARS))
                if target not in presets:
                    known = ", ".join(presets) or "none"
                    raise self.tree.fail(f["preset"][1], f"unknown preset {shown(target, 40)} (known: {known})",
                                         UnknownName)
            else:
                target = self.value(f, action, LIVE["mix"])
            seconds = self.value(f, "seconds", GLIDE) if "seconds" in f else None
            return TriggerMapping(action, target, number if "note" in f else None, number if "cc" in f else None,
                                  channel, seconds, line)
        if "note" in f or "param" not in f:
            raise self.tree.fail(node, f"a note mapping needs one of {', '.join(ACTIONS)}; a cc mapping needs "
                                       f"'param' (a knob) or one of {', '.join(ACTIONS)} (a button)")
        self._only(f, _KNOB_KEYS, "a knob (cc with param)")
        param = self.choice(f, "param", KNOB_PARAMS)
        pair = [key for key in ("from", "to") if key in f]
        if len(pair) != (2 if param == "crossfade" else 0):
            raise self.tree.fail(node, "'from' and 'to' (two vector names) go together with param: crossfade")
        default = default_range(param)  # the row's span (mappings.default_range)
        if default is None and not {"min", "max"} <= set(f):
            raise self.tree.fail(node, f"param {param} needs 'min' and 'max' (the values at CC 0 and CC 127)")
        # (named by the row: "min of alpha" says more than "min")
        low = self.tree.checked(knob_end(param, "min"), *f["min"]) if "min" in f else default[0]
        high = self.tree.checked(knob_end(param, "max"), *f["max"]) if "max" in f else default[1]
        if low == high:
            raise self.tree.fail(node, "'min' and 'max' must differ")
        curve = self.choice(f, "curve", CURVES) if "curve" in f else "linear"
        if curve != "linear" and not (low > 0 and high > 0):
            raise self.tree.fail(f["curve"][1], f"curve {curve} spaces values by equal ratios: it needs min and "
                                                "max > 0")
        vectors = None
        if param == "crossfade":
            vectors = tuple(self.value(f, key, Param(key, "text", "", size=NAME_CHARS)) for key in ("from", "to"))
        takeover = self.choice(f, "takeover", TAKEOVERS) if "takeover" in f else "pickup"
        return KnobMapping(number, channel, param, low, high, curve, takeover, vectors, line)

    def _only(self, f: dict, allowed: tuple[str, ...], what: str) -> None:
        for key, (_, key_node, _) in f.items():
            if key not in allowed:
                raise self.tree.fail(key_node, f"key {key!r} does not apply to {what} (it takes: {', '.join(allowed)})")

    def presets(self, node: yaml.Node) -> dict[str, Preset]:
        if not isinstance(node, yaml.MappingNode):
            raise self.tree.fail(node, "'presets' needs named presets, e.g. fusion: {mix: jazz=0.5,rock=0.5, "
                                       "alpha: 0.6}")
        out: dict[str, Preset] = {}
        for key_node, value_node in self.items(node, "'presets'"):
            name = str(key_node.value)[:NAME_CHARS + 1] if isinstance(key_node, yaml.ScalarNode) else ""
            try:
                check_text("a preset's name", name, NAME_CHARS, empty=False)
            except MusicsteerError as exc:
                raise self.tree.fail(key_node, str(exc), type(exc)) from None
            if name in out:
                raise self.tree.fail(key_node, f"preset {name!r} defined twice")
            f = self.fields(value_node, _PRESET_KEYS, f"preset {name!r}")
            if "mix" not in f or "alpha" not in f:
                raise self.tree.fail(key_node, f"preset {name!r} needs 'mix' and 'alpha'")
            out[name] = Preset(
                name, self.value(f, "mix", LIVE["mix"]), self.value(f, "alpha", LIVE["alpha"]),
                self.value(f, "layer", LIVE["layer"]) if "layer" in f else None,
                self.value(f, "site", LIVE["site"]) if "site" in f else None,
                self.value(f, "seconds", GLIDE) if "seconds" in f else 0.0, key_node.start_mark.line + 1)
        return out

    def defaults(self, node: yaml.Node) -> dict[str, Any]:
        keys = tuple(YAML_KEYS)
        f = self.fields(node, keys, "defaults")
        values: dict[str, Any] = {}
        for key in f:
            row = YAML_KEYS[key]
            if row.name in values:
                spellings = " or ".join(repr(k) for k in row.keys)
                raise self.tree.fail(f[key][1], f"give one of {spellings} (the same setting), not both")
            values[row.name] = self.value(f, key, row)
        if "prebuffer" in values:
            try:  # with the rule every path uses (check_stream): 'auto' queues at most AUTO_BUFFER_MAX
                check_stream(values.get("buffer", PARAMS["buffer"].high), values["prebuffer"], 16)
            except MusicsteerError as exc:
                raise self.tree.fail(f["prebuffer"][1], str(exc), type(exc)) from None
        return values
