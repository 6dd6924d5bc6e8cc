"""The toy stages' training loop (musicsteer/toy/training.py): a run killed with SIGKILL and resumed ends
bit-identical to one that ran straight through; a budget stops it; another recipe's checkpoint is refused;
the log is trimmed to the checkpoint and plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from musicsteer.engine.errors import MusicsteerError
from musicsteer.toy.training import (
    CHECKPOINT,
    Stage,
    TrainConfig,
    batch_indices,
    plot_log,
    read_log,
    step_rng,
    train,
)


class Toy(Stage):
    """A small regression with dropout, noise from torch's global RNG, a numpy-drawn batch, a schedule and a
    private generator: every kind of state a checkpoint must carry, so a resume that drops one shows."""

    name = "toy"

    def __init__(self, steps: int, width: int = 16, kill_at: int | None = None, sig: int = signal.SIGKILL) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Dropout(0.2), torch.nn.Linear(width, 1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, steps)
        self.gen = torch.Generator().manual_seed(1)
        self.data = torch.randn(40, 4)
        self.target = self.data.sum(1, keepdim=True)
        self.kill_at, self.width, self.sig = kill_at, width, sig
        self.modules, self.optimizers, self.schedulers = {"net": self.net}, {"opt": self.opt}, {"lr": self.sched}

    def train_step(self, step: int) -> dict[str, float]:
        if step == self.kill_at:
            os.kill(os.getpid(), self.sig)  # a kill (or Ctrl-C) mid-step
        index = torch.from_numpy(batch_indices(len(self.data), 8, 0, step))
        x = self.data[index] + 0.01 * torch.randn(8, 4) + 0.01 * torch.randn(8, 4, generator=self.gen)
        x = x * float(step_rng(0, step).uniform(0.9, 1.1))
        loss = (self.net(x) - self.target[index]).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        return {"loss": loss.item()}

    def evaluate(self, step: int, folder: Path) -> dict[str, float]:
        torch.randn(100)  # evaluation draws from the global RNG: must not change training
        return {"error": (self.net(self.data) - self.target).pow(2).mean().item()}

    def describe(self) -> dict:
        return {"width": self.width}

    def extra_state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


STEPS = 40
CONFIG = TrainConfig(steps=STEPS, checkpoint_every=5, eval_every=10, progress=False)

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_toy_training import CONFIG, STEPS, Toy
    from musicsteer.toy.training import train
    train(Toy(STEPS, kill_at={kill_at}), {folder!r}, CONFIG)
""")


def _weights(stage: Toy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in stage.net.state_dict().items()}


def test_killed_run_resumes_bit_identical(tmp_path: Path) -> None:
    straight = Toy(STEPS)
    result = train(straight, tmp_path / "straight", CONFIG)
    assert result.stopped == "done" and result.step == STEPS
    losses = [row["loss"] for row in read_log(tmp_path / "straight") if row["kind"] == "train"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])

    folder = tmp_path / "killed"
    code = _CHILD.format(tests=str(Path(__file__).parent), kill_at=STEPS // 2 + 2, folder=str(folder))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    saved = torch.load(folder / CHECKPOINT, weights_only=False)
    assert saved["step"] == STEPS // 2  # the last checkpoint before the kill
    assert max(row["step"] for row in read_log(folder)) == STEPS // 2 + 2  # the log ran past it

    resumed = Toy(STEPS)
    result = train(resumed, folder, CONFIG)
    assert result.stopped == "done" and result.step == STEPS
    for name, tensor in _weights(straight).items():
        assert torch.equal(tensor, _weights(resumed)[name]), name
    moments = [stage.opt.state_dict()["state"][0]["exp_avg"] for stage in (straight, resumed)]
    assert torch.equal(*moments)
    # the log reads as one run: the killed steps past the checkpoint were dropped and done again
    assert read_log(folder) == read_log(tmp_path / "straight")


def test_stop_after_then_resume_is_identical_and_a_rerun_does_nothing(tmp_path: Path) -> None:
    straight = Toy(STEPS)
    train(straight, tmp_path / "a", CONFIG)
    first = train(Toy(STEPS), tmp_path / "b", TrainConfig(**{**CONFIG.__dict__, "stop_after": 17}))
    assert (first.stopped, first.step) == ("stop_after", 17)  # not a checkpoint multiple: saved at the stop
    resumed = Toy(STEPS)
    train(resumed, tmp_path / "b", CONFIG)
    assert all(torch.equal(v, _weights(resumed)[k]) for k, v in _weights(straight).items())
    again = train(Toy(STEPS), tmp_path / "b", CONFIG)  # already done: loads, trains nothing
    final = [row for row in read_log(tmp_path / "b") if row["kind"] == "eval"][-1]
    assert again.step == STEPS and again.last_eval == {"error": final["error"]}
    assert sum(row["kind"] == "eval" for row in read_log(tmp_path / "b")) == STEPS // 10


def test_budget_stops_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = train(Toy(STEPS), tmp_path, TrainConfig(steps=STEPS, budget_s=0.0, progress=True))
    assert (result.stopped, result.step) == ("budget", 1)
    assert "stopped at the time budget" in capsys.readouterr().err
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["step"] == 1


def test_other_recipe_is_refused(tmp_path: Path) -> None:
    train(Toy(STEPS), tmp_path, TrainConfig(**{**CONFIG.__dict__, "stop_after": 5}))
    with pytest.raises(MusicsteerError, match=r"another recipe \(recipe.width: 16 -> 32\)"):
        train(Toy(STEPS, width=32), tmp_path, CONFIG)


def test_batches_cover_each_epoch_and_log_plots(tmp_path: Path) -> None:
    seen = np.concatenate([batch_indices(10, 3, 7, step) for step in range(10)])  # 3 epochs of 10
    for epoch in range(3):
        assert sorted(seen[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:20])  # each epoch its own order
    train(Toy(STEPS), tmp_path, CONFIG)
    png = plot_log(tmp_path, tmp_path / "curves.png", smooth=5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["kind"] == "train"


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_identical(tmp_path: Path) -> None:
    straight = Toy(STEPS)
    train(straight, tmp_path / "straight", CONFIG)
    interrupted = train(Toy(STEPS, kill_at=13, sig=signal.SIGINT), tmp_path / "b", CONFIG)
    assert (interrupted.stopped, interrupted.step) == ("interrupted", 14)  # step 13 (the 14th) ran to its end
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["step"] == 14
    resumed = Toy(STEPS)
    train(resumed, tmp_path / "b", CONFIG)
    assert all(torch.equal(v, _weights(resumed)[k]) for k, v in _weights(straight).items())
