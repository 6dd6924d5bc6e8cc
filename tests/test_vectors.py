"""Steering-vector file format (DESIGN.md §3): round trip, no pickle, validation, mixing."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.vectors import FORMAT, SteeringVectors

L, D = 3, 4


def _vectors(**kw) -> SteeringVectors:
    g = torch.Generator().manual_seed(0)
    # Non-alphabetical labels: the file must keep this order even though safetensors sorts names.
    dirs = {name: torch.randn(L, D, generator=g) * 5 for name in ("rock", "ambient", "jazz")}
    args = dict(model="tiny", method="diffmean", best_layer=1, accuracy=[0.5, 0.9, None], dataset="fp:abc")
    args.update(kw)
    return SteeringVectors.create(dirs, **args)


def _basis(**kw) -> SteeringVectors:
    e = torch.eye(D)[:2]
    return SteeringVectors.create({"a": e[0].repeat(L, 1), "b": e[1].repeat(L, 1), "a2": e[0].repeat(L, 1)},
                                  model="tiny", method="mse", best_layer=0, **kw)


def _raises(fn, match: str | None = None) -> str:
    with pytest.raises(MusicsteerError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg
    if match:
        assert match in msg, msg
    return msg


def _hand_file(tmp_path: Path, tensors=None, **meta_changes) -> Path:
    """A file written directly with save_file: metadata of a good file, edited (None deletes a key)."""
    v = _vectors()
    meta = v._metadata()
    for k, val in meta_changes.items():
        if val is None:
            meta.pop(k)
        else:
            meta[k] = val
    path = tmp_path / "hand.safetensors"
    save_file(tensors if tensors is not None else v.directions, str(path), metadata=meta)
    return path


def test_round_trip_preserves_everything(tmp_path: Path) -> None:
    v = _vectors()
    out = v.save(tmp_path / "v.safetensors")
    assert out == v.path and v.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    w = SteeringVectors.load(out)
    assert w.labels == ["rock", "ambient", "jazz"]
    for name in v.labels:
        assert torch.equal(w.directions[name], v.directions[name])
        assert w.directions[name].dtype == torch.float32
    for field in ("model", "site", "method", "best_layer", "accuracy", "dataset", "created"):
        assert getattr(w, field) == getattr(v, field), field
    assert (w.num_layers, w.d_model) == (L, D)
    assert w.path == out and w.sha256 == v.sha256
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temp file behind


def test_file_is_plain_safetensors(tmp_path: Path) -> None:
    path = _vectors(site="attention").save(tmp_path / "v.safetensors")
    assert not path.read_bytes().startswith(b"\x80")  # pickle protocol marker
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["ambient", "jazz", "rock"]
        assert f.get_tensor("rock").shape == (L, D)
    assert meta["format"] == FORMAT == "musicsteer.vectors/1"
    assert meta["site"] == "attention" and meta["method"] == "diffmean" and meta["model"] == "tiny"
    assert (meta["num_layers"], meta["d_model"], meta["best_layer"]) == (str(L), str(D), "1")
    assert json.loads(meta["labels"]) == ["rock", "ambient", "jazz"]
    assert json.loads(meta["accuracy"]) == [0.5, 0.9, None]
    assert meta["dataset"] == "fp:abc" and meta["created"].endswith("+00:00")


def test_create_normalises_rows_and_accepts_numpy() -> None:
    rows = np.array([[3.0, 4.0], [0.0, -2.0]])
    v = SteeringVectors.create({"x": rows}, model="m", method="mse", best_layer=1)
    assert v.directions["x"].dtype == torch.float32
    assert torch.allclose(v.directions["x"], torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert v.accuracy == [None, None]
    v = _vectors(accuracy=[float("nan"), 1, 0.25])
    assert v.accuracy == [None, 1.0, 0.25]  # NaN is not valid JSON: recorded as null
    assert torch.allclose(v.directions["rock"].norm(dim=1), torch.ones(L))


def test_direction_and_mix() -> None:
    v = _basis()
    assert torch.equal(v.direction("b", 2), torch.eye(D)[1])
    v.direction("a", 0).zero_()  # a copy: the stored vector is untouched
    assert v.directions["a"][0].norm() == 1
    s = 1 / math.sqrt(2)
    assert torch.allclose(v.mix({"a": 1.0, "b": 1.0}, 1), torch.tensor([s, s, 0, 0]))
    assert torch.allclose(v.mix({"a": 1.0, "b": -1.0}, 1), torch.tensor([s, -s, 0, 0]))
    assert torch.allclose(v.mix({"a": -2.0}, 0), torch.tensor([-1.0, 0, 0, 0]))
    assert torch.allclose(v.mix({"a": 3.0, "b": np.float32(4.0)}, 2), torch.tensor([0.6, 0.8, 0, 0]))


def test_check_model() -> None:
    v = _vectors()
    v.check_model(L, D)
    v.check_model(L, D, "/local/copy/of/musicgen-small")  # another name, same geometry: allowed
    msg = _raises(lambda: v.check_model(24, 1024, "facebook/musicgen-medium"))
    assert f"{L} layers / d_model {D}" in msg and "24 layers / d_model 1024" in msg
    _raises(lambda: v.check_model(L, D + 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dirs={"x": torch.zeros(L, D)}), "all-zero row"),
        (dict(dirs={"x": torch.tensor([[1.0, float("nan")]])}), "NaN"),
        (dict(dirs={"x": torch.tensor([[1.0, float("inf")]])}), "NaN"),
        (dict(dirs={"x": torch.ones(L, D), "y": torch.ones(L, D + 1)}), "disagree"),
        (dict(dirs={"": torch.ones(L, D)}), "label"),
        (dict(dirs={"a\nb": torch.ones(L, D)}), "label"),
        (dict(dirs={3: torch.ones(L, D)}), "label"),
        (dict(dirs={}), "at least one"),
        (dict(dirs={"x": torch.ones(D)}), "shape"),
        (dict(dirs={"x": torch.ones(L, D)}, best_layer=L), "best_layer"),
        (dict(dirs={"x": torch.ones(L, D)}, best_layer=-1), "best_layer"),
        (dict(dirs={"x": torch.ones(L, D)}, site="mlp"), "site"),
        (dict(dirs={"x": torch.ones(L, D)}, accuracy=[0.5]), "accuracy"),
    ],
)
def test_create_errors(kwargs: dict, match: str) -> None:
    args = dict(model="m", method="mse", best_layer=0)
    args.update(kwargs)
    dirs = args.pop("dirs")
    _raises(lambda: SteeringVectors.create(dirs, **args), match)


def test_lookup_and_mix_errors() -> None:
    v = _vectors()
    msg = _raises(lambda: v.direction("disco", 0), "unknown vector 'disco'")
    assert msg.endswith("this file has: rock, ambient, jazz")
    _raises(lambda: v.direction("rock", L), "out of range")
    _raises(lambda: v.direction("rock", -1), "out of range")
    _raises(lambda: v.mix({"rock": 1.0, "disco": 1.0}, 0), "unknown vector 'disco'")
    _raises(lambda: v.mix({"rock": 1.0}, L), "out of range")
    _raises(lambda: v.mix({}, 0), "empty")
    _raises(lambda: v.mix({"rock": float("nan")}, 0), "finite")
    _raises(lambda: v.mix({"rock": 0.0}, 0), "zero")
    _raises(lambda: _basis().mix({"a": 1.0, "a2": -1.0}, 0), "zero")  # exact cancellation


def test_save_errors(tmp_path: Path) -> None:
    _raises(lambda: _vectors().save(tmp_path / "no" / "such" / "dir.safetensors"), "does not exist")


def test_load_refuses_bad_format_string(tmp_path: Path) -> None:
    _raises(lambda: SteeringVectors.load(_hand_file(tmp_path, format="other.vectors/1")), "not a musicsteer")
    _raises(lambda: SteeringVectors.load(_hand_file(tmp_path, format=None)), "not a musicsteer")


def test_load_errors(tmp_path: Path) -> None:
    _raises(lambda: SteeringVectors.load(tmp_path / "missing.safetensors"), "not found")
    _raises(lambda: SteeringVectors.load(tmp_path), "not found")  # a directory is not a file
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, this is not safetensors\n" * 4)
    _raises(lambda: SteeringVectors.load(junk), "not a safetensors file")
    good = _vectors().save(tmp_path / "good.safetensors").read_bytes()
    junk.write_bytes(good[:-7])  # truncated
    _raises(lambda: SteeringVectors.load(junk), "not a safetensors file")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(2, 2)}, str(plain))  # no metadata at all
    _raises(lambda: SteeringVectors.load(plain), "not a musicsteer")

    load = lambda **kw: SteeringVectors.load(_hand_file(tmp_path, **kw))  # noqa: E731
    _raises(lambda: load(dataset=None), "missing metadata dataset")
    _raises(lambda: load(d_model=str(D + 1)), "shape")
    _raises(lambda: load(num_layers="two"), "unreadable metadata")
    _raises(lambda: load(labels="not json"), "unreadable metadata")
    _raises(lambda: load(labels=json.dumps(["rock", "jazz"])), "do not match")
    _raises(lambda: load(labels=json.dumps(["rock", "ambient", "jazz", "jazz"])), "do not match")
    _raises(lambda: load(labels=json.dumps([])), "labels")
    _raises(lambda: load(site="mlp"), "site")
    _raises(lambda: load(best_layer=str(L)), "best_layer")
    _raises(lambda: load(accuracy=json.dumps([0.1])), "accuracy")

    good_dirs = _vectors().directions
    _raises(lambda: load(tensors={**good_dirs, "rock": good_dirs["rock"] * 1.01}), "unit")
    _raises(lambda: load(tensors={**good_dirs, "rock": good_dirs["rock"].double()}), "float32")
    bad = good_dirs["rock"].clone()
    bad[0, 0] = float("nan")
    _raises(lambda: load(tensors={**good_dirs, "rock": bad}), "NaN")
    # Tolerance is 1e-3: a row off by 1e-5 (float noise from another writer) still loads.
    near = {**good_dirs, "jazz": good_dirs["jazz"] * 1.00001}
    assert SteeringVectors.load(_hand_file(tmp_path, tensors=near)).labels == ["rock", "ambient", "jazz"]
