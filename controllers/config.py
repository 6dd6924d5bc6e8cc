"""A session config (`--config FILE.yaml`): OSC, MIDI mappings, named presets and engine defaults.

Top-level keys (all optional): `osc:`, `midi:`, `presets:`, `defaults:`; see examples/session.yaml and
examples/nanokontrol2.yaml. Like the automation loader we parse with `yaml.compose`, because the node
tree keeps line numbers: every mistake is one line naming the file, the line and the key, e.g.
"set.yaml line 7: unknown key 'minn' (known: cc, channel, …)".
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import NUMERIC_PARAMS, Change, parse_mix, validate_change

from .automation import yaml_error
from .midi import KnobMapping, TriggerMapping

CURVES = ("linear", "exp", "log")  # "log" is the same curve as "exp" (the name a "log pot" goes by)
TAKEOVERS = ("pickup", "jump")
# Knob targets: engine numbers, a two-vector crossfade, and the mapper's own default morph time.
KNOB_PARAMS = ("alpha", "guidance", "temperature", "top_k", "top_p", "layer", "seed", "crossfade", "morph_seconds")
_KNOB_RANGES = {"alpha": (0.0, 1.0), "top_p": (0.0, 1.0), "crossfade": (0.0, 1.0)}  # min/max may be left out
ACTIONS = ("steer", "morph", "preset")
_KNOB_KEYS = ("cc", "channel", "param", "min", "max", "curve", "takeover", "from", "to")
_TRIGGER_KEYS = ("cc", "note", "channel", *ACTIONS, "seconds")
_PRESET_KEYS = ("mix", "alpha", "layer", "site", "seconds")
_DEFAULT_KEYS = ("prompt", "seed", "guidance", "temperature", "top_k", "top_p", "alpha", "steer", "mix", "layer",
                 "site", "buffer", "prebuffer")
MIDI_APIS = ("alsa", "jack")


@dataclass(frozen=True)
class Preset:
    name: str
    mix: dict[str, float]
    alpha: float
    layer: int | None = None
    site: str | None = None
    seconds: float = 0.0  # glide time for mix (morph) and alpha (ramp)
    line: int = 0

    def changes(self) -> list[Change]:
        out = [Change("mix", self.mix, self.seconds), Change("alpha", self.alpha, self.seconds)]
        out += [Change("layer", self.layer)] if self.layer is not None else []
        return out + ([Change("site", self.site)] if self.site is not None else [])


@dataclass(frozen=True)
class OscConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    allow: tuple[str, ...] = ()  # sender addresses/networks; empty: any sender
    status_interval: float = 1.0


@dataclass(frozen=True)
class MidiConfig:
    port: str | int | None = None  # name substring or index; None: the command line's --midi
    api: str | None = None  # alsa | jack; None: rtmidi's default
    mappings: tuple[KnobMapping | TriggerMapping, ...] = ()


@dataclass(frozen=True)
class Defaults:
    """Engine defaults; None means "not set here" (the command line's own default applies)."""
    prompt: str | None = None
    seed: int | None = None
    guidance: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    alpha: float | None = None
    steer: dict[str, float] | None = None
    layers: tuple[int, ...] | None = None
    site: str | None = None
    buffer: float | None = None
    prebuffer: float | None = None


@dataclass(frozen=True)
class SessionConfig:
    source: str
    osc: OscConfig | None = None
    midi: MidiConfig | None = None
    presets: dict[str, Preset] = field(default_factory=dict)
    defaults: Defaults = field(default_factory=Defaults)


def load_config(path: str | Path) -> SessionConfig:
    """Read and validate a session config; every failure is a one-line MusicsteerError."""
    path = Path(path)
    if not path.is_file():
        raise MusicsteerError(f"config file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise MusicsteerError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> SessionConfig:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        return _Reader(source, loader).config(root)
    except yaml.YAMLError as exc:
        raise MusicsteerError(yaml_error(exc, source)) from None
    finally:
        if loader is not None:
            loader.dispose()


def preset_changes(config: SessionConfig, name: str) -> list[Change]:
    """The validated changes that recall preset `name` (mix, alpha, then layer and site if set)."""
    if name not in config.presets:
        raise MusicsteerError(f"unknown preset {name!r} (known: {', '.join(config.presets) or 'none defined'})")
    return [validate_change(change) for change in config.presets[name].changes()]


def check_vector_names(config: SessionConfig, labels: list[str] | tuple[str, ...]) -> None:
    """Refuse a config naming vectors the loaded vectors file lacks (names cannot be checked before)."""
    mappings = config.midi.mappings if config.midi else ()
    uses = [(p.line, list(p.mix)) for p in config.presets.values()]
    uses += [(m.line, list(m.target)) for m in mappings if isinstance(m, TriggerMapping) and m.action != "preset"]
    uses += [(m.line, list(m.vectors)) for m in mappings if isinstance(m, KnobMapping) and m.vectors]
    for line, names in sorted(uses):  # report the first in file order
        for name in names:
            if name not in labels:
                raise MusicsteerError(f"{config.source} line {line}: unknown vector {name!r}; "
                                      f"the vectors file has: {', '.join(labels)}")


class _Reader:
    """Walks the YAML node tree; every check knows the line of the key it is about."""

    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source, self.loader = source, loader

    def fail(self, node: yaml.Node, message: str) -> MusicsteerError:
        return MusicsteerError(f"{self.source} line {node.start_mark.line + 1}: {message}")

    def fields(self, node: yaml.Node, known: tuple[str, ...], what: str) -> dict[str, tuple[Any, yaml.Node]]:
        """key -> (constructed value, key node), refusing unknown and repeated keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of keys to values")
        out: dict[str, tuple[Any, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in known:
                raise self.fail(key_node, f"unknown key {str(key)!r} in {what} (known: {', '.join(known)})")
            if key in out:
                raise self.fail(key_node, f"key {key!r} given twice in {what}")
            out[key] = (self.loader.construct_object(value_node, deep=True), key_node)
        return out

    def number(self, fields: dict, key: str, low: float = -math.inf, high: float = math.inf,
               whole: bool = False) -> float | int:
        value, node = fields[key]
        if isinstance(value, str):  # YAML 1.1 reads `1e3` as text
            with contextlib.suppress(ValueError):
                value = float(value)
        kind = "a whole number" if whole else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or (whole and value != int(value)):
            raise self.fail(node, f"{key!r} needs {kind}, got {value!r}")
        if not low <= value <= high:
            raise self.fail(node, f"{key!r} must be {_range(low, high)}, got {value!r}")
        return int(value) if whole else float(value)

    def choice(self, fields: dict, key: str, options: tuple[str, ...]) -> str:
        if (value := fields[key][0]) not in options:
            node = fields[key][1]
            raise self.fail(node, f"{key!r} must be one of {', '.join(options)}, got {value!r}")
        return value

    def text(self, fields: dict, key: str) -> str:
        value, node = fields[key]
        if not isinstance(value, str) or not value:
            raise self.fail(node, f"{key!r} needs text, got {value!r}")
        return value

    def mix(self, fields: dict, key: str) -> dict[str, float]:
        value, node = fields[key]
        try:
            return validate_change(Change("mix", parse_mix(value) if isinstance(value, str) else value)).value
        except MusicsteerError as exc:
            raise self.fail(node, f"{key!r}: {exc}") from None

    def engine_value(self, fields: dict, key: str, param: str) -> Any:
        """A value checked by the engine's own rules; a value it would clamp is an error in a file."""
        value, node = fields[key]
        if param in NUMERIC_PARAMS:
            value = self.number(fields, key, whole=NUMERIC_PARAMS[param][0] is int)
        try:
            change = validate_change(Change(param, value))
        except MusicsteerError as exc:
            raise self.fail(node, f"{key!r}: {exc}") from None
        if change.clamped:
            _, low, high = NUMERIC_PARAMS[param]
            raise self.fail(node, f"{key!r} must be {_range(low, high)}, got {value!r}")
        return change.value

    # -- sections ---------------------------------------------------------------------------------
    def config(self, root: yaml.Node | None) -> SessionConfig:
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
            defaults=self.defaults(nodes["defaults"]) if "defaults" in top else Defaults(),
        )

    def osc(self, node: yaml.Node) -> OscConfig:
        f = self.fields(node, ("host", "port", "allow", "status_interval"), "osc")
        allow = f.get("allow", ([], node))[0]
        allow = [allow] if isinstance(allow, str) else allow
        for entry in allow if isinstance(allow, list) else [allow]:
            try:
                ipaddress.ip_network(str(entry), strict=False)
            except ValueError:
                raise self.fail(f["allow"][1], f"'allow' needs IP addresses or networks such as 192.168.1.0/24, "
                                               f"got {entry!r}") from None
        return OscConfig(host=self.text(f, "host") if "host" in f else OscConfig.host,
                         port=self.number(f, "port", 1, 65535, whole=True) if "port" in f else OscConfig.port,
                         allow=tuple(str(entry) for entry in allow),
                         status_interval=self.number(f, "status_interval", 0.05, 3600) if "status_interval" in f
                         else OscConfig.status_interval)

    def midi(self, node: yaml.Node, presets: dict[str, Preset]) -> MidiConfig:
        f = self.fields(node, ("port", "api", "mappings"), "midi")
        port = f["port"][0] if "port" in f else None
        if port is not None and (isinstance(port, bool) or not isinstance(port, str | int) or port == ""):
            raise self.fail(f["port"][1], f"'port' needs a MIDI input name (or part of one) or an index, got {port!r}")
        items = f.get("mappings", ([], node))[0] or []  # `mappings:` left empty is harmless
        if not isinstance(items, list):
            raise self.fail(f["mappings"][1], "'mappings' needs a list such as - {cc: 0, param: alpha}")
        items = next(v for k, v in node.value if k.value == "mappings").value if items else []
        return MidiConfig(port=port, api=self.choice(f, "api", MIDI_APIS) if "api" in f else None,
                          mappings=tuple(self.mapping(item, presets) for item in items))

    def mapping(self, node: yaml.Node, presets: dict[str, Preset]) -> KnobMapping | TriggerMapping:
        f = self.fields(node, tuple(dict.fromkeys(_KNOB_KEYS + _TRIGGER_KEYS)), "a MIDI mapping")
        line = node.start_mark.line + 1
        sources = [k for k in ("cc", "note") if k in f]
        if len(sources) != 1:
            raise self.fail(node, "a MIDI mapping needs exactly one of 'cc' or 'note'")
        number = self.number(f, sources[0], 0, 127, whole=True)
        channel = self.number(f, "channel", 1, 16, whole=True) if "channel" in f else None
        actions = [k for k in ACTIONS if k in f]
        if "param" in f and actions or len(actions) > 1:
            raise self.fail(node, f"a MIDI mapping does one thing: 'param' or one of {', '.join(ACTIONS)}")
        if actions:
            self._only(f, _TRIGGER_KEYS, "a note or button")
            action = actions[0]
            if "seconds" in f and action != "morph":
                raise self.fail(f["seconds"][1], "'seconds' sets a morph time, but this mapping has no morph")
            if action == "preset":
                target: str | dict[str, float] = self.text(f, "preset")
                if target not in presets:
                    known = ", ".join(presets) or "none"
                    raise self.fail(f["preset"][1], f"unknown preset {target!r} (known: {known})")
            else:
                target = self.mix(f, action)
            seconds = self.number(f, "seconds", 0, 3600) if "seconds" in f else None
            return TriggerMapping(action, target, number if "note" in f else None, number if "cc" in f else None,
                                  channel, seconds, line)
        if "note" in f or "param" not in f:
            raise self.fail(node, f"a note mapping needs one of {', '.join(ACTIONS)}; a cc mapping needs 'param' "
                                  f"(a knob) or one of {', '.join(ACTIONS)} (a button)")
        self._only(f, _KNOB_KEYS, "a knob (cc with param)")
        param = self.choice(f, "param", KNOB_PARAMS)
        pair = [key for key in ("from", "to") if key in f]
        if len(pair) != (2 if param == "crossfade" else 0):
            raise self.fail(node, "'from' and 'to' (two vector names) go together with param: crossfade")
        defaults = _KNOB_RANGES.get(param)
        if defaults is None and not {"min", "max"} <= set(f):
            raise self.fail(node, f"param {param} needs 'min' and 'max' (the values at CC 0 and CC 127)")
        low = self.number(f, "min") if "min" in f else defaults[0]
        high = self.number(f, "max") if "max" in f else defaults[1]
        if low == high:
            raise self.fail(node, "'min' and 'max' must differ")
        curve = self.choice(f, "curve", CURVES) if "curve" in f else "linear"
        if curve != "linear" and not (low > 0 and high > 0):
            raise self.fail(f["curve"][1], f"curve {curve} spaces values by equal ratios: it needs min and max > 0")
        vectors = (self.text(f, "from"), self.text(f, "to")) if param == "crossfade" else None
        takeover = self.choice(f, "takeover", TAKEOVERS) if "takeover" in f else "pickup"
        return KnobMapping(number, channel, param, low, high, curve, takeover, vectors, line)

    def _only(self, f: dict, allowed: tuple[str, ...], what: str) -> None:
        for key, (_, key_node) in f.items():
            if key not in allowed:
                raise self.fail(key_node, f"key {key!r} does not apply to {what} (it takes: {', '.join(allowed)})")

    def presets(self, node: yaml.Node) -> dict[str, Preset]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "'presets' needs named presets, e.g. fusion: {mix: jazz=0.5,rock=0.5, alpha: 0.6}")
        out: dict[str, Preset] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            if name in out:
                raise self.fail(key_node, f"preset {name!r} defined twice")
            f = self.fields(value_node, _PRESET_KEYS, f"preset {name!r}")
            if "mix" not in f or "alpha" not in f:
                raise self.fail(key_node, f"preset {name!r} needs 'mix' and 'alpha'")
            out[name] = Preset(
                name, self.mix(f, "mix"), self.engine_value(f, "alpha", "alpha"),
                self.engine_value(f, "layer", "layer") if "layer" in f else None,
                self.engine_value(f, "site", "site") if "site" in f else None,
                self.number(f, "seconds", 0, 3600) if "seconds" in f else 0.0, key_node.start_mark.line + 1)
        return out

    def defaults(self, node: yaml.Node) -> Defaults:
        f = self.fields(node, _DEFAULT_KEYS, "defaults")
        if "steer" in f and "mix" in f:
            raise self.fail(f["mix"][1], "give one of 'steer' or 'mix' (the same setting), not both")
        engine_keys = ("prompt", "seed", "guidance", "temperature", "top_k", "top_p", "alpha", "site")
        values: dict[str, Any] = {key: self.engine_value(f, key, key) for key in f if key in engine_keys}
        for key in ("steer", "mix"):
            values.update({"steer": self.mix(f, key)} if key in f else {})
        if "layer" in f:
            raw, key_node = f["layer"]
            items = raw if isinstance(raw, list) else [raw]
            values["layers"] = tuple(self.engine_value({"layer": (v, key_node)}, "layer", "layer") for v in items)
        values.update({key: self.number(f, key, 0.01, 600) for key in ("buffer", "prebuffer") if key in f})
        if values.get("prebuffer", 0) > values.get("buffer", math.inf):
            raise self.fail(f["prebuffer"][1], "'prebuffer' cannot be longer than 'buffer'")
        return Defaults(**values)


def _range(low: float, high: float) -> str:
    return f">= {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
