"""The session's presets: recalled and saved from any surface (OSC, the browser page, MIDI triggers).

A preset is a steering snapshot (controllers/mappings.Preset): the mix and α, gliding together over
its `seconds`, and the layer(s) and site. The bank starts with a config's `presets:`; a preset saved
live is taken from the engine's values at that moment and, with `--presets FILE.yaml`, written to
that file at once (atomically, in the config's `presets:` format, so the file also loads as a
`--config`). Recalling submits the preset's changes to the control state like any other input:
checked by the parameter table, logged, replayable.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import MusicsteerError, TooLarge, UnknownName, shown
from musicsteer.engine.events import Change
from musicsteer.engine.files import atomic_write
from musicsteer.engine.params import GLIDE, NAME_CHARS, check_text

from .config import MAX_ITEMS, load_config
from .mappings import Preset


class PresetBank:
    """Named presets, thread-safe. `control` is the session's ControlState (submit, values)."""

    def __init__(self, control: Any, presets: dict[str, Preset] | None = None, path: str | Path | None = None) -> None:
        self._control = control
        self._lock = threading.Lock()
        self.presets: dict[str, Preset] = dict(presets or {})
        self.path = Path(path) if path is not None else None

    def names(self) -> list[str]:
        with self._lock:
            return list(self.presets)

    def recall(self, name: Any) -> list[Change]:
        """Submit the changes of preset `name` (UnknownName if there is none); returns them as checked."""
        name = check_text("a preset's name", name, NAME_CHARS, empty=False)
        with self._lock:
            preset = self.presets.get(name)
        if preset is None:
            raise UnknownName(f"unknown preset {shown(name, 40)} (known: {', '.join(self.names()) or 'none saved'})")
        return [self._control.submit(change) for change in preset.changes()]

    def save(self, name: Any, seconds: Any = 0.0) -> Preset:
        """Save the engine's present steering (mix, α, layers, site) as `name`, recalled over `seconds`.
        Raises a typed MusicsteerError for a bad name or time, nothing to save (no mix), or a full bank;
        with a file, an OSError from writing it is a MusicsteerError (the preset stays saved in memory)."""
        name = check_text("a preset's name", name, NAME_CHARS, empty=False)
        seconds = GLIDE.check(seconds)[0]
        values = self._control.values
        if not values.mix:
            raise MusicsteerError("nothing to save: no steering vector is selected")
        preset = Preset(name, dict(values.mix), float(values.alpha), tuple(values.layers), values.site, seconds)
        with self._lock:
            if name not in self.presets and len(self.presets) >= MAX_ITEMS:
                raise TooLarge(f"{MAX_ITEMS} presets are saved already")
            self.presets[name] = preset
            snapshot = dict(self.presets)
        if self.path is not None:
            try:
                atomic_write(self.path, lambda tmp: tmp.write_text(_yaml(snapshot), encoding="utf-8"))
            except OSError as exc:
                raise MusicsteerError(f"preset {name!r} saved for this session, but not to {self.path}: "
                                      f"{exc.strerror or exc}") from None
        return preset


def _yaml(presets: dict[str, Preset]) -> str:
    """The config's `presets:` section (controllers/config.py reads it back)."""
    out: dict[str, Any] = {}
    for p in presets.values():
        entry: dict[str, Any] = {"mix": dict(p.mix), "alpha": p.alpha}
        if p.layer is not None:
            entry["layer"] = list(p.layer) if len(p.layer) > 1 else p.layer[0]
        if p.site is not None:
            entry["site"] = p.site
        if p.seconds:
            entry["seconds"] = p.seconds
        out[p.name] = entry
    return "# presets saved by musicsteer play (loads as --config or --presets)\n" + \
        yaml.safe_dump({"presets": out}, sort_keys=False, allow_unicode=True)


def load_presets(path: str | Path) -> dict[str, Preset]:
    """The presets of a `--presets` file (none if it does not exist yet); a bad file is one line."""
    return load_config(path).presets if Path(path).exists() else {}


__all__ = ["PresetBank", "load_presets"]
