"""Steering-vector files: one unit direction per label per layer, stored as `.safetensors`.

The format (docs/design.md §4) is plain safetensors so a file can never run code when loaded (no
pickle). Each label is a float32 tensor `(num_layers, d_model)`; row i is the direction at layer i
(residual site: the input of decoder layer i; attention site: the output of layer i's
self-attention). Metadata carries the shapes so the engine can refuse a file made for another model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from .errors import BadType, MusicsteerError, one_line, shown
from .params import NAME_CHARS, SITES, check_text

FORMAT = "musicsteer.vectors/1"
_META_KEYS = ("format", "model", "d_model", "num_layers", "site", "method", "best_layer", "labels",
              "accuracy", "dataset", "created")
# Rows are normalised in float64 then stored as float32, so 1e-3 only trips on files that were
# edited or written by something other than `create`.
_UNIT_TOL = 1e-3
MIX_SYNTAX = ",="  # `--steer A=0.5,B=0.5` (and a YAML mix written as text) splits a name at these


def check_label(label: object, what: str = "a vector label") -> str:
    """A vector's label, by the rule every surface selects one by, or one line (BadType/TooLarge): the text
    rule of every input (params.check_text: valid Unicode, at most NAME_CHARS characters, not empty),
    printable on one line, without spaces at either end or `,` `=` (the CLI's mix syntax strips and splits
    there, so such a vector could be written but never selected), and not safetensors' `__metadata__`.
    Checked where a label is made (a probe's class, `create`) and where one is read (`load`)."""
    label = check_text(what, label, NAME_CHARS, empty=False)
    if not label.isprintable():
        raise BadType(f"{what} must be printable on one line, got {shown(label)}")
    if label != label.strip() or any(ch in label for ch in MIX_SYNTAX) or label == "__metadata__":
        raise BadType(f"{what} may not start or end with a space, hold {' or '.join(MIX_SYNTAX)}, or be "
                      f"__metadata__ (no surface could select it), got {shown(label)}")
    return label


def _normalise_rows(label: str, value: torch.Tensor | np.ndarray) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as e:
        raise MusicsteerError(f"vector '{label}' is not a numeric array: {one_line(e)}") from None
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise MusicsteerError(f"vector '{label}' has shape {tuple(t.shape)}; expected (num_layers, d_model)")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise MusicsteerError(f"vector '{label}' has dtype {t.dtype}; expected a float array")
    t = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise MusicsteerError(f"vector '{label}' contains NaN or infinite values")
    norms = t.norm(dim=1)
    zero = (norms == 0).nonzero().flatten().tolist()
    if zero:
        # A zero row has no direction: steering along it would silently do nothing.
        raise MusicsteerError(f"vector '{label}' has an all-zero row at layer {zero[0]}")
    return (t / norms[:, None]).to(torch.float32).contiguous()


def _is_index(i: object, n: int) -> bool:
    # bool is an int subclass; True as a layer is a caller bug, not layer 1.
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n


def _clean_accuracy(accuracy: list[float | None] | None, num_layers: int) -> list[float | None]:
    if accuracy is None:
        return [None] * num_layers
    if len(accuracy) != num_layers:
        raise MusicsteerError(f"accuracy has {len(accuracy)} entries; expected one per layer ({num_layers})")
    out: list[float | None] = []
    for a in accuracy:
        if a is not None and not isinstance(a, int | float):
            raise MusicsteerError(f"accuracy entries must be numbers or null, got {a!r}")
        # NaN/inf are not valid JSON; a layer a probe could not score is recorded as null.
        out.append(None if a is None or not math.isfinite(a) else float(a))
    return out


@dataclass
class SteeringVectors:
    directions: dict[str, torch.Tensor]
    model: str
    site: str
    method: str
    best_layer: int
    accuracy: list[float | None]
    dataset: str
    created: str
    path: Path | None = None
    sha256: str | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.directions)

    @property
    def num_layers(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[1])

    @classmethod
    def create(cls, directions: dict[str, torch.Tensor | np.ndarray], *, model: str, site: str = "residual",
               method: str, best_layer: int, accuracy: list[float | None] | None = None,
               dataset: str = "") -> SteeringVectors:
        if not directions:
            raise MusicsteerError("no steering vectors given; need at least one label")
        if site not in SITES:
            raise MusicsteerError(f"unknown site '{site}'; expected one of: {', '.join(SITES)}")
        if not isinstance(method, str) or not method:
            raise MusicsteerError("method must be a non-empty string")
        out: dict[str, torch.Tensor] = {}
        for label, value in directions.items():
            # Labels become tensor names and CLI/OSC/page/YAML arguments: every surface must select them.
            out[check_label(label)] = _normalise_rows(label, value)
        shapes = {tuple(t.shape) for t in out.values()}
        if len(shapes) > 1:
            raise MusicsteerError(f"vectors disagree in shape: {', '.join(str(s) for s in sorted(shapes))}")
        num_layers = next(iter(shapes))[0]
        if not _is_index(best_layer, num_layers):
            raise MusicsteerError(f"best_layer {best_layer!r} not in layers 0..{num_layers - 1}")
        return cls(directions=out, model=str(model), site=site, method=method, best_layer=best_layer,
                   accuracy=_clean_accuracy(accuracy, num_layers), dataset=str(dataset),
                   created=datetime.now(UTC).isoformat(timespec="seconds"))

    def _metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "model": self.model, "d_model": str(self.d_model),
                "num_layers": str(self.num_layers), "site": self.site, "method": self.method,
                "best_layer": str(self.best_layer), "labels": json.dumps(self.labels),
                "accuracy": json.dumps(self.accuracy), "dataset": self.dataset, "created": self.created}

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if not path.parent.is_dir():
            raise MusicsteerError(f"cannot write {path}: directory {path.parent} does not exist")
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.directions.items()}
        data = safetensors.torch.save(tensors, metadata=self._metadata())
        # Temp file in the same directory + os.replace: a reader never sees a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise MusicsteerError(f"cannot write {path}: {one_line(e.strerror or e)}") from None
        self.path = path
        self.sha256 = hashlib.sha256(data).hexdigest()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVectors:
        path = Path(path)
        if not path.is_file():
            raise MusicsteerError(f"vectors file {path} not found")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise MusicsteerError(f"cannot read vectors file {path}: {one_line(e.strerror or e)}") from None

        def bad(why: str) -> MusicsteerError:
            return MusicsteerError(f"vectors file {path} is invalid: {why}")

        try:
            tensors = safetensors.torch.load(data)
            # safetensors.torch.load drops metadata; the header is a length-prefixed JSON object.
            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        except Exception as e:  # any parse failure (bad header, truncation, JSON) means the same
            raise MusicsteerError(f"{path} is not a safetensors file: {one_line(e)}") from None
        fmt = meta.get("format")
        if fmt != FORMAT:
            raise MusicsteerError(f"{path} is not a musicsteer vectors file (format {fmt!r}, not {FORMAT!r})")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise bad(f"missing metadata {', '.join(missing)}")
        try:
            d_model, num_layers, best_layer = (int(meta[k]) for k in ("d_model", "num_layers", "best_layer"))
            labels = json.loads(meta["labels"])
            accuracy = json.loads(meta["accuracy"])
        except ValueError as e:
            raise bad(f"unreadable metadata: {one_line(e)}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or not labels:
            raise bad("`labels` must be a non-empty JSON list of strings")
        for label in labels:  # (a file written by hand, or before the rule: `\ud800` is valid JSON)
            try:
                check_label(label)
            except MusicsteerError as e:
                raise bad(str(e)) from None
        if len(set(labels)) != len(labels) or set(labels) != set(tensors):
            raise bad(f"labels {shown(labels)} do not match the tensors {shown(sorted(tensors))}")
        if not isinstance(accuracy, list):
            raise bad("`accuracy` must be a JSON list")
        if meta["site"] not in SITES:
            raise bad(f"unknown site '{meta['site']}'")
        if not 0 <= best_layer < num_layers:
            raise bad(f"best_layer {best_layer} out of range 0..{num_layers - 1}")
        directions: dict[str, torch.Tensor] = {}
        for label in labels:  # metadata order, not the file's (safetensors sorts tensors)
            t = tensors[label]
            if t.dtype != torch.float32:
                raise bad(f"vector '{label}' is {t.dtype}; expected float32")
            if tuple(t.shape) != (num_layers, d_model):
                raise bad(f"vector '{label}' has shape {tuple(t.shape)}, not {(num_layers, d_model)}")
            if not torch.isfinite(t).all():
                raise bad(f"vector '{label}' contains NaN or infinite values")
            norms = t.double().norm(dim=1)
            off = ((norms - 1).abs() > _UNIT_TOL).nonzero().flatten().tolist()
            if off:
                raise bad(f"vector '{label}' row {off[0]} has norm {norms[off[0]]:.4g}; rows must be unit")
            directions[label] = t
        try:
            accuracy = _clean_accuracy(accuracy, num_layers)
        except MusicsteerError as e:
            raise bad(str(e)) from None
        return cls(directions=directions, model=meta["model"], site=meta["site"], method=meta["method"],
                   best_layer=best_layer, accuracy=accuracy, dataset=meta["dataset"], created=meta["created"],
                   path=path, sha256=hashlib.sha256(data).hexdigest())

    def check_model(self, num_layers: int, d_model: int, model_name: str | None = None) -> None:
        # Only the shapes matter: a local copy of the hub model has another name but the same
        # geometry, and its vectors apply unchanged. model_name is accepted for the caller's symmetry.
        if (num_layers, d_model) != (self.num_layers, self.d_model):
            name = self.path if self.path is not None else self.model
            loaded = f" ({model_name})" if model_name else ""
            raise MusicsteerError(
                f"vectors file {name} was made for a model with {self.num_layers} layers / d_model "
                f"{self.d_model}; the loaded model{loaded} has {num_layers} layers / d_model {d_model}")

    def _check_layer(self, layer: int) -> None:
        if not _is_index(layer, self.num_layers):
            last = self.num_layers - 1
            raise MusicsteerError(f"layer {layer!r} out of range; this file has layers 0..{last}")

    def _check_label(self, label: str) -> None:
        if label not in self.directions:
            raise MusicsteerError(f"unknown vector {label!r}; this file has: {', '.join(self.labels)}")

    def direction(self, label: str, layer: int) -> torch.Tensor:
        self._check_label(label)
        self._check_layer(layer)
        return self.directions[label][layer].clone()  # a copy, so callers cannot edit the file's vectors

    def mix(self, weights: dict[str, float], layer: int) -> torch.Tensor:
        if not weights:
            raise MusicsteerError("empty mix; give at least one vector name and weight")
        self._check_layer(layer)
        total = torch.zeros(self.d_model, dtype=torch.float64)
        scale = 0.0
        for label, w in weights.items():
            self._check_label(label)
            try:
                wf = float(w)  # numpy scalars and OSC floats alike
            except (TypeError, ValueError):
                wf = math.nan
            if not math.isfinite(wf):
                raise MusicsteerError(f"mix weight for '{label}' must be a finite number, got {w!r}")
            total += wf * self.directions[label][layer].double()
            scale += abs(wf)
        norm = float(total.norm())
        # Relative threshold: cancellation (a:1, b:-1 with a == b) leaves float noise, not zero.
        if norm <= 1e-6 * max(scale, 1e-12):
            raise MusicsteerError(f"the mix {dict(weights)} cancels out to a zero vector at layer {layer}")
        return (total / norm).to(torch.float32)
