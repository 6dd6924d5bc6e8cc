"""scripts/gpu-check --dry-run on this CPU: every step of the GPU run, with the tiny model, so the script never rots.

The dry run installs the carried wheels (.whl/, filled by scripts/gpu-wheels) as the GPU machine would (for
Python 3.12, without an index), stages musicsteer from this checkout, and runs every step with imports
refused for any package the GPU image lacks and .whl does not carry, and with sounddevice failing as it fails
there (no PortAudio library): what the GPU machine would miss fails here. Nothing is mocked but those two
gaps of the GPU image (scripts/gpu_check_image/sitecustomize.py), which this machine does not have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("setup", "tests", "bench-small", "play", "bench-medium", "bench-large", "batch")
GOAL_KEYS = ("small_steps_per_s", "medium_steps_per_s", "large_steps_per_s", "ttfa_warm_ms", "steer_overhead_pct",
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
    assert all(steps[name]["status"] == "ok" for name in STEPS), steps
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
    play = figures["play"]
    assert play["exit_code"] == 0 and play["played_s"] > 3 and play["decode_step"] == "graph"
    assert play["knob_to_applied_ms"]["count"] > 50  # α moved every token over OSC and was echoed applied
    assert play["overlap"]["chunks"] > 0 and play["overlap"]["steps"] > 0
    for name in ("bench-small", "bench-medium", "bench-large", "batch"):
        assert json.loads((out / f"{name}.json").read_text())["results"]
    text = (out / "summary.md").read_text()
    assert "DRY RUN" in text and "| random:small, graph+steer, bf16: steps/s |" in text
