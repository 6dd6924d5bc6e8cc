"""The benchmark report on the tiny model: complete, finite, JSON-ready, and leaving the model as it was."""

from __future__ import annotations

import json
import math

import pytest
import torch

from musicsteer.engine.benchmark import run_benchmark
from musicsteer.engine.loading import load_model


@pytest.fixture(scope="module")
def report_and_model() -> tuple[dict, object, object]:
    lm = load_model("tiny", "cpu", "float32")
    encoder = lm.model.audio_encoder
    # Bound methods are made afresh on each access, so keep the function and its owner to compare.
    before = encoder.decode
    rng_state = torch.random.get_rng_state()
    report = run_benchmark(lm, steps=20, repeats=1)
    assert torch.equal(torch.random.get_rng_state(), rng_state), "the global RNG must not move"
    return report, lm, before


def test_report_has_every_result_with_finite_positive_numbers(report_and_model: tuple) -> None:
    report, lm, _ = report_and_model
    assert report["model"] == lm.name
    assert report["steps"] == 20
    assert report["dtype"] == "float32"
    assert report["device"].startswith("cpu")
    assert {"torch", "transformers"} <= report.keys()
    names = [r["name"] for r in report["results"]]
    assert names == ["engine", "engine+steer", "engine+graph", "hf_generate"]
    for result in report["results"]:
        for key in ("steps_per_s", "rtf", "ttfa_s", "ms_per_step"):
            value = result[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (result["name"], key, value)
        assert result["rtf"] == pytest.approx(result["steps_per_s"] / lm.frame_rate)
        assert len(result["extra"]["steps_per_s_runs"]) == 1


def test_ratios_present_and_json_serialisable(report_and_model: tuple) -> None:
    report, _, _ = report_and_model
    ratios = report["ratios"]
    assert {"engine_vs_hf_generate", "steer_overhead_pct"} <= set(ratios)
    assert all(math.isfinite(v) for v in ratios.values())
    engine, _, _, hf = report["results"]
    assert ratios["engine_vs_hf_generate"] == pytest.approx(engine["steps_per_s"] / hf["steps_per_s"])
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_audio_decode_restored(report_and_model: tuple) -> None:
    _, lm, before = report_and_model
    after = lm.model.audio_encoder.decode
    assert after == before
    assert getattr(after, "__func__", after) is getattr(before, "__func__", before)
    assert "decode" not in vars(lm.model.audio_encoder)
