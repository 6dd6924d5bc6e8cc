"""`--quantize` and the bench's drift report on the command line: real processes, the cached tiny model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from musicsteer.bench import drift as bench_drift
from musicsteer.cli import build_parser, main
from musicsteer.commands import setup
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import fast_decoder
from musicsteer.engine.loading import load_model

TINY = ["--model", "tiny", "--device", "cpu"]
DQ_LINEAR = torch.ao.nn.quantized.dynamic.Linear


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicsteer", *args], capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("musicsteer: error: "), result.stderr
    return lines[0]


def test_render_int8_writes_the_requested_seconds(tmp_path) -> None:
    out = tmp_path / "q.wav"
    result = cli("render", *TINY, "--quantize", "int8", "--prompt", "rock", "--seconds", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out)
    assert rate == 32000 and len(audio) == 32000


def test_bench_int8_reports_drift_against_its_float32_original(tmp_path) -> None:
    report_path = tmp_path / "bench.json"
    result = cli("bench", *TINY, "--quantize", "int8", "--steps", "5", "--repeats", "1", "--recapture-tokens", "0",
                 "--knob-changes", "0", "--json", str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["model"] == "tiny+int8" and report["dtype"] == "float32"
    drift = report["drift"]
    assert drift["option"] == "int8" and drift["reference_dtype"] == "float32" and drift["steps"] == 100
    # Bounds of tests/test_quantize.py loosened: here the point is that the section is wired, not the kernel.
    assert 0 < drift["rel_max"] < 0.2 and drift["argmax_agree_pct"] > 50
    assert 0 < drift["mean_abs"] < drift["max_abs"]
    assert report["speed_option"]["quantize_s"] > 0
    hf = next(r for r in report["results"] if r["name"] == "hf_generate")
    assert "stays float32" in hf["extra"]["note"]
    assert "drift int8 vs float32" in result.stdout and "hf_generate stays float32" in result.stdout


@pytest.mark.parametrize(("extra", "says"), [
    (["--quantize", "int8", "--dtype", "bfloat16"], "drop --dtype bfloat16"),
    (["--quantize", "int4"], "quantize must be one of int8, int8-tensor, got 'int4'"),
])
def test_bad_combinations_give_one_line_and_exit_2(tmp_path, extra: list[str], says: str) -> None:
    result = cli("render", *TINY, "--seconds", "1", "--out", str(tmp_path / "x.wav"), *extra)
    assert says in one_line_error(result)
    assert not (tmp_path / "x.wav").exists()


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["render", "--out", "x.wav", *argv])


def test_cuda_refused_before_loading(monkeypatch, capsys) -> None:
    # No GPU here: pretend the device resolves to CUDA; the refusal must come before any weights load.
    monkeypatch.setattr(setup, "resolve_device", lambda _: torch.device("cuda", 0))
    monkeypatch.setattr(setup, "load_model", lambda *_: pytest.fail("loaded a model to refuse it"))
    assert main(["render", *TINY, "--quantize", "int8", "--seconds", "1", "--out", "x.wav"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CPU only" in err[0] and "--device cpu" in err[0]


def test_probe_extract_refuses_quantize(capsys) -> None:
    assert main(["probe", "extract", "--data", "nowhere", "--out", "acts", "--quantize", "int8"]) == 2
    assert "probe extract takes no --quantize" in capsys.readouterr().err


def test_quantised_name_loads_quantised_so_a_logged_session_replays() -> None:
    # play's session log records lm.name, "tiny+int8": render --replay must quantise again.
    loaded = setup.load_options(_args(*TINY[2:]), "tiny+int8")
    assert loaded.quantize == "int8" and loaded.lm.name == "tiny+int8" and loaded.base.name == "tiny"
    assert isinstance(fast_decoder(loaded.lm).lm_head, DQ_LINEAR)
    assert setup.load_options(_args(*TINY[2:], "--quantize", "int8"), "tiny+int8").quantize == "int8"
    with pytest.raises(MusicsteerError, match="contradicts"):
        setup.load_options(_args(*TINY[2:], "--quantize", "int8-tensor"), "tiny+int8")


def test_dtype_drift_reloads_float32_with_the_same_weights(tiny) -> None:
    bf16 = load_model("tiny", "cpu", "bfloat16")
    assert bench_drift.option_name(bf16, None) == "bfloat16" and bench_drift.option_name(tiny, None) is None
    drift = bench_drift.drift_section(bf16, bf16, "bfloat16", steps=20)
    assert drift["reference_dtype"] == "float32" and "loaded again" in drift["reference"]
    assert 0 < drift["rel_max"] < 0.1 and drift["argmax_agree_pct"] > 50
    # As in the bench: the optimised model has run (its FastDecoder is built), the reference is fresh.
    other = load_model("tiny", "cpu", "float32")  # not the shared fixture: it gets a weight changed
    bench_drift.check_same_weights(bf16, other)
    with torch.no_grad():
        other.model.decoder.lm_heads[0].weight[0, 0] += 1.0
    with pytest.raises(MusicsteerError, match="other weights"):
        bench_drift.check_same_weights(bf16, other)
