"""The session's presets: recalled and saved from any surface (OSC, the browser page, MIDI triggers).

A preset is a steering snapshot (controllers/mappings.Preset): the mix and α, gliding together over
its `seconds`, and the layer(s) and site. The bank starts with a config's `presets:`; a preset saved
live is taken from the engine's values at that moment and, with `--presets FILE.yaml`, written to
that file by a writer thread (atomically, in the config's `presets:` format; a burst of saves is
one write, so a flood of saves costs the serving threads a dict update each). Recalling submits
the preset's changes to the control state like any other input:
checked by the parameter table, logged, replayable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from musicsteer.engine.errors import BadType, MusicsteerError, TooLarge, UnknownName, shown
from musicsteer.engine.events import Change
from musicsteer.engine.files import atomic_write
from musicsteer.engine.params import GLIDE, NAME_CHARS, check_text

from .config import MAX_ITEMS, parse_config
from .mappings import Preset
from .yaml_file import dump, read_text

WRITE_EVERY = 0.25  # s: the most often the presets file is rewritten


class PresetBank:
    """Named presets, thread-safe. `control` is the session's ControlState (submit, values); `notify(level,
    text)` tells the performer what failed later (a write to the file)."""

    def __init__(self, control: Any, presets: dict[str, Preset] | None = None, path: str | Path | None = None,
                 notify: Callable[[str, str], None] | None = None) -> None:
        self._control, self._notify = control, notify
        self._lock = threading.Lock()
        self.presets: dict[str, Preset] = dict(presets or {})
        self.path = Path(path) if path is not None else None
        self.writes = 0  # files written (saves in a burst are written once)
        # Saves arrive on the OSC thread and the web loop, which must never wait on a disk: a writer thread
        # writes the whole bank at most every WRITE_EVERY seconds, the last state winning.
        self._dirty, self._closed, self._unsaved = threading.Event(), False, False
        self._writer: threading.Thread | None = None
        if self.path is not None:
            self._writer = threading.Thread(target=self._write_loop, name="musicsteer-presets", daemon=True)
            self._writer.start()

    def names(self) -> list[str]:
        with self._lock:
            return list(self.presets)

    def recall(self, name: Any) -> list[Change]:
        """Submit the changes of preset `name` (UnknownName if there is none); returns them as checked."""
        name = check_name(name)
        with self._lock:
            preset = self.presets.get(name)
        if preset is None:
            raise UnknownName(f"unknown preset {shown(name, 40)} (known: {', '.join(self.names()) or 'none saved'})")
        return [self._control.submit(change) for change in preset.changes()]

    def save(self, name: Any, seconds: Any = 0.0) -> Preset:
        """Save the engine's present steering (mix, α, layers, site) as `name`, recalled over `seconds`.
        Raises a typed MusicsteerError for a bad name or time, nothing to save (no mix), or a full bank.
        With a file, it is written soon after on the writer thread (a failure: a notice, and the
        preset stays saved for this session)."""
        name = check_name(name)
        seconds = GLIDE.named("seconds").check(seconds)[0]
        values = self._control.values
        if not values.mix:
            raise MusicsteerError("nothing to save: no steering vector is selected")
        preset = Preset(name, dict(values.mix), float(values.alpha), tuple(values.layers), values.site, seconds)
        with self._lock:
            if name not in self.presets and len(self.presets) >= MAX_ITEMS:
                raise TooLarge(f"{MAX_ITEMS} presets are saved already")
            self.presets[name] = preset
        self._unsaved = True
        self._dirty.set()
        return preset

    def close(self) -> None:
        """Write what is unwritten and end the writer thread."""
        self._closed = True
        self._dirty.set()
        if self._writer is not None:
            self._writer.join(timeout=10)

    def _write_loop(self) -> None:
        while True:
            self._dirty.wait()
            if not self._closed:
                time.sleep(WRITE_EVERY)  # a burst of saves becomes one write
            self._dirty.clear()
            with self._lock:
                snapshot, unsaved, self._unsaved = dict(self.presets), self._unsaved, False
            if not unsaved:  # (the wake-up of close() with nothing saved: the file stays untouched)
                if self._closed:
                    return
                continue
            text = _yaml(snapshot)
            try:
                atomic_write(self.path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
                self.writes += 1
            except OSError as exc:
                if self._notify is not None:
                    self._notify("error", f"presets not written to {self.path}: {exc.strerror or exc} (they are "
                                          "kept for this session)")
            if self._closed and not self._dirty.is_set():
                return


def bank_of(presets: PresetBank | None) -> PresetBank:
    """The session's bank, for a surface asked to recall or save (UnknownName: a session without one, which
    only a library caller can make: the CLI always gives one)."""
    if presets is None:
        raise UnknownName("this session has no presets (--config with presets:, or --presets FILE)")
    return presets


def check_name(name: Any) -> str:
    """A preset's name: 1..NAME_CHARS characters, no control characters at all (it is a YAML key and a label)."""
    name = check_text("a preset's name", name, NAME_CHARS, empty=False)
    if any(ch in name for ch in "\t\n"):
        raise BadType(f"a preset's name holds a control character: {shown(name)}")
    return name


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
    # (yaml_file.dump: whatever text passed check_name reads back as itself, `016`, `yes`, U+2028 included)
    return "# presets saved by musicsteer play (loads as --presets or --config)\n" + dump({"presets": out})


def load_presets(path: str | Path) -> dict[str, Preset]:
    """The presets of a `--presets` file: none if it does not exist yet or is empty; a file holding more
    than `presets:` (a whole config) is refused, since saving rewrites it with presets only."""
    path = Path(path)
    if not path.exists() or path.is_file() and path.stat().st_size == 0:
        return {}
    config = parse_config(read_text(path, "presets file"), source=str(path))
    if config.osc or config.midi or config.defaults:
        raise MusicsteerError(f"presets file {path} holds more than presets (osc:, midi: or defaults:); saving "
                              "rewrites it with presets only: give --presets a file of its own")
    return config.presets


__all__ = ["PresetBank", "bank_of", "check_name", "load_presets"]
