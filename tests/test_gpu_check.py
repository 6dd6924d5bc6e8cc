"""scripts/gpu-check --dry-run on this CPU: every step of the GPU run, with the tiny model, so the script never rots.

The dry run installs the carried wheels (.whl/, filled by scripts/gpu-wheels) as the GPU machine would (for
Python 3.12, without an index), stages musicsteer from this checkout, and runs every step with imports
refused for any package the GPU image lacks and .whl does not carry, and with sounddevice failing as it fails
there (no PortAudio library): what the GPU machine would miss fails here. Nothing is mocked but those two
gaps of the GPU image (scripts/gpu_check_image/sitecustomize.py), which this machine does not have.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("setup", "tests", "bench-small", "play", "batch", "bench-medium", "bench-large")  # the order they run in
GOAL_KEYS = ("small_steps_per_s", "medium_steps_per_s", "large_steps_per_s", "ttfa_audio_warm_ms", "steer_overhead_pct",
             "graph_builds_bench", "graph_builds_play")


@pytest.fixture(scope="module")
def wheels() -> None:
    """.whl complete for the GPU machine: filled from the package index if it is not (once per checkout)."""
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-wheels"), "--check"], capture_output=True,
                           text=True, timeout=120)
    if check.returncode:
        fill = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-wheels")], capture_output=True, text=True,
                              timeout=600)
        assert fill.returncode == 0, fill.stdout + fill.stderr


def test_gpu_wheels_carry_every_missing_package_and_their_needs(wheels) -> None:
    listed = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-wheels"), "--list"], capture_output=True,
                            text=True, timeout=60, check=True).stdout.split()
    names = {line.split("==")[0] for line in listed}
    # The list of what the GPU image lacks, and the C-binding layer two of them need.
    assert names >= {"soundfile", "sounddevice", "soxr", "python-osc", "mido", "python-rtmidi", "starlette", "uvicorn",
                     "websockets", "platformdirs", "zeroconf", "ifaddr", "python-oscquery", "cffi", "pycparser"}
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-wheels"), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    size = sum(p.stat().st_size for p in (ROOT / ".whl").glob("*.whl")) / 2**20
    assert size < 30  # of the 64 MiB a device call carries


def test_dry_run_runs_every_step_and_reports_every_goal(wheels, tmp_path) -> None:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--out", str(out),
                             "--budget", "1500"], capture_output=True, text=True, timeout=1800,
                            env={**__import__("os").environ, "GPU_CHECK_WORK": str(tmp_path / "work")})
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:], steps)
    assert list(steps)[:len(STEPS)] == list(STEPS), steps  # most important first: batch before the big models
    assert all(steps[name]["status"] == "ok" for name in STEPS if name != "tests"), steps
    # On the CPU the CUDA-only tests skip, and the step says so rather than a bare "ok".
    assert re.fullmatch(r"ok \(\d+ passed, \d+ skipped\)", steps["tests"]["status"]), steps["tests"]
    assert summary["in_flight"] is None
    # What comes back from a device call (/work/.library/device/README.md): at most 8 files, each at most
    # 16 MiB, plain names, at most 2 folders down.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    for path in files:
        rel = path.relative_to(out)
        assert path.stat().st_size <= 16 * 2**20 and len(rel.parts) <= 3, rel
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
    assert {p.name for p in files} == {"summary.json", "summary.md", "log.txt", "tests.xml"}
    log = (out / "log.txt").read_text()
    assert all(f"===== {name} =====" in log for name in STEPS)
    assert steps["bench-toy"]["status"] in ("ok", "skipped")
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    assert summary["versions"]["musicsteer"].startswith(str(tmp_path / "work" / "stage"))  # the staged copy
    goals = {g["key"]: g for g in summary["goals"]}
    assert set(goals) == set(GOAL_KEYS)
    for key in GOAL_KEYS:  # every goal has its figure beside it (the CPU's figures miss the speed goals: a dry run)
        assert isinstance(goals[key]["value"], int | float), goals[key]
        assert goals[key]["verdict"] in ("met", "NOT met")
    assert goals["graph_builds_bench"]["value"] == 1 and goals["graph_builds_play"]["value"] == 1
    figures = summary["figures"]
    assert figures["tests"]["tests"] > 0 and figures["tests"]["failures"] == figures["tests"]["errors"] == 0
    assert set(figures["frames_per_s"]) == {"B1", "B4", "B8"}
    # Time to first audio (the first PCM chunk, the goal's figure) and to the first frame of codes, each by its name.
    assert figures["ttfa_audio_warm_ms"] > 0 and figures["ttfa_codes_warm_ms"] > 0
    play = figures["play"]
    assert play["exit_code"] == 0 and play["played_s"] > 3 and play["decode_step"] == "graph"
    assert play["knob_to_applied_ms"]["count"] > 50  # α moved every token over OSC and was echoed applied
    assert play["overlap"]["chunks"] > 0 and play["overlap"]["steps"] > 0
    for name in ("bench-small", "bench-medium", "bench-large", "batch"):
        assert summary["reports"][name]["results"]  # each step's whole report, inside summary.json
    assert summary["reports"]["play"]["stats"]
    text = (out / "summary.md").read_text()
    assert "DRY RUN" in text and "| random:small, graph+steer, bf16: steps/s |" in text


def test_unknown_step_names_are_refused_before_anything_runs(tmp_path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--out",
                             str(tmp_path / "out"), "--only", "bench_small"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "no step named bench_small" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_killed_in_setup_leaves_a_summary_naming_the_step_in_flight(tmp_path) -> None:
    """A budget too small for setup: the setup command is cut at once, and the summary (written at start,
    then after each change) names setup and why."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--out", str(out),
                             "--budget", "6"], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "GPU_CHECK_WORK": str(tmp_path / "work")})
    assert result.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["setup"]["status"].startswith("failed"), summary["steps"]
    assert {p.name for p in out.iterdir()} <= {"summary.json", "summary.md", "log.txt"}


def test_gpu_wheels_check_refuses_wheels_for_another_platform(wheels, tmp_path, monkeypatch) -> None:
    """The real check on a copy of .whl where one wheel's file says musllinux, or macOS: refused, as pip on the
    GPU machine (CPython 3.12, manylinux x86-64) would refuse to install it."""
    import importlib.util
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader("gpu_wheels", str(ROOT / "scripts" / "gpu-wheels"))
    gpu_wheels = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_wheels", loader))
    loader.exec_module(gpu_wheels)
    carry = gpu_wheels.to_carry()
    binary = next(p for p in sorted((ROOT / ".whl").glob("*.whl")) if "manylinux" in p.name)
    for platform in ("musllinux_1_2_x86_64", "macosx_11_0_x86_64"):
        folder = tmp_path / platform
        folder.mkdir()
        for path in (ROOT / ".whl").glob("*.whl"):
            name = path.name if path != binary else re.sub(r"manylinux[^-]*\.whl$", f"{platform}.whl", path.name)
            (folder / name).write_bytes(path.read_bytes())
        monkeypatch.setattr(gpu_wheels, "WHEELS", folder)
        found = gpu_wheels.problems(carry)
        assert len(found) == 1 and "not a wheel for CPython 3.12 on manylinux x86-64" in found[0], found
    monkeypatch.setattr(gpu_wheels, "WHEELS", ROOT / ".whl")
    assert gpu_wheels.problems(carry) == []
