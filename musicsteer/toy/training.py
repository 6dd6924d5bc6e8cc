"""The one training loop of every toy stage (codec, decoder, judge): deterministic, resumable, budgeted, logged.

A stage (`Stage`) owns its models, optimisers and schedulers and does one optimisation step at a time;
`train` runs it to `TrainConfig.steps`, and gives it:

* determinism: `torch.manual_seed`, fixed threads, and data that is a pure function of (seed, step)
  (`batch_indices`, `step_rng`), so the step number *is* the data position;
* resumption: an atomic checkpoint (`checkpoint.pt`, written to a temporary file and renamed) every
  `checkpoint_every` steps or `checkpoint_minutes`, whichever comes first, holding every state_dict,
  the RNG states of torch, numpy and python, the step and the time spent. A rerun in the same
  folder resumes from it, and the result is bit-identical to an uninterrupted run (tests/test_toy_training.py
  kills one with SIGKILL). SIGINT/SIGTERM end the step in flight, checkpoint and return;
* a time budget (`budget_s`, wall-clock time summed over resumptions): at it, checkpoint, say so, return;
* an eval hook every `eval_every` steps (held-out metrics, pictures), run with the RNG states forked so
  evaluating never changes what training does;
* a log, `log.jsonl`: one line per step ({"step", "kind": "train", losses...}) and per eval
  ({"kind": "eval", metrics...}); a resumption drops the lines past its checkpoint. `plot_log` draws it.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..engine.errors import MusicsteerError

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


@dataclass
class TrainConfig:
    steps: int  # optimisation steps in all (the schedule's length: fixed for a run and its resumptions)
    seed: int = 0
    threads: int = 1  # torch intra-op threads: fixed, since results may differ with the thread count
    checkpoint_every: int = 500  # steps
    checkpoint_minutes: float = 10.0  # ... or this much wall-clock time, whichever comes first
    eval_every: int = 0  # steps; 0: only at the end
    budget_s: float | None = None  # wall-clock seconds in all (evals included, summed over resumptions); None: no limit
    stop_after: int | None = None  # stop (checkpointed) after this step, as an interruption would; None: at `steps`
    progress: bool = True  # a tqdm bar on stderr



def warmup_cosine(step: int, warmup: int, steps: int, final_fraction: float) -> float:
    """The learning-rate factor at `step` (from 0): linear warm-up over `warmup` steps, then a cosine from 1
    down to `final_fraction` at `steps` (the schedule of the codec and decoder stages)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    step: int  # steps done
    stopped: str  # "done" | "budget" | "interrupted" | "stop_after"
    seconds: float  # wall-clock time in all, over every resumption
    last_losses: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)


class Stage:
    """What `train` trains. Subclasses set the three dicts in __init__ (every value has state_dict /
    load_state_dict) and implement `train_step`; `evaluate` and `describe` are optional."""

    name = "stage"

    def __init__(self) -> None:
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step (step = 0, 1, ...): draw batch `step`, update, return scalar losses."""
        raise NotImplementedError

    def evaluate(self, step: int, folder: Path) -> dict[str, float]:
        """Held-out metrics after `step` steps (may write pictures into `folder`). Models are in eval mode."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The stage's recipe as JSON values: a checkpoint made under another recipe is refused."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Other state to checkpoint (a generator of the stage's own, ...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def batch_indices(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices into `count` items for batch `step`: epochs of seeded permutations laid end to end, so every
    item is seen once per epoch and batch `step` depends only on (count, batch_size, seed, step)."""
    if count < 1 or batch_size < 1:
        raise MusicsteerError(f"cannot draw batches of {batch_size} from {count} items")
    start = step * batch_size
    out = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, count)
        out.append(_permutation(count, seed, epoch)[offset])
    return np.asarray(out)


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    key = (count, seed, epoch)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 8:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch, 1]).permutation(count)
    return _PERMUTATIONS[key]


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """A numpy generator for step `step`'s random choices (crops, gains, ...): a function of (seed, step, stream)."""
    return np.random.default_rng([seed, step, 2, stream])


def train(stage: Stage, folder: str | os.PathLike, config: TrainConfig) -> TrainResult:
    """Train `stage` to `config.steps` steps in `folder`, resuming from its checkpoint if it holds one.

    Raises MusicsteerError if the checkpoint was made by another stage or recipe (one line)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    recipe = {"stage": stage.name, "seed": config.seed, "steps": config.steps, "recipe": stage.describe()}
    recipe = json.loads(json.dumps(recipe))  # as it reads back from a checkpoint (tuples become lists)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    step, seconds = _resume(stage, folder, recipe)
    _trim_log(folder / LOG, step)
    result = TrainResult(step, "done", seconds)
    end = config.steps if config.stop_after is None else min(config.steps, config.stop_after)
    last_save = time.monotonic()
    bar = tqdm(total=config.steps, initial=step, desc=stage.name, disable=not config.progress, dynamic_ncols=True,
               unit="step", smoothing=0.05)
    with open(folder / LOG, "a", encoding="utf-8") as log, _deferred_signals() as interrupted:
        _set_mode(stage, train=True)
        clock = time.monotonic()
        while step < end:
            losses = {k: float(v) for k, v in stage.train_step(step).items()}
            step += 1
            result.last_losses = losses
            log.write(json.dumps({"step": step, "kind": "train", **losses}) + "\n")
            log.flush()  # a line per step, readable while it runs (steps take ~0.1 s or more: cheap)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]}, refresh=False)
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                result.last_eval = _evaluate(stage, folder, step, log)
            now = time.monotonic()
            seconds, clock = seconds + now - clock, now
            over_budget = config.budget_s is not None and seconds >= config.budget_s
            due = step % config.checkpoint_every == 0 or now - last_save >= 60 * config.checkpoint_minutes
            if due or over_budget or interrupted.is_set() or step == end:
                _save(stage, folder, recipe, step, seconds)
                last_save = time.monotonic()
            if over_budget and step < end:
                result.stopped = "budget"
                bar.write(f"{stage.name}: stopped at the time budget ({config.budget_s:g} s) after step {step} of "
                          f"{config.steps}; checkpoint saved, rerun with a larger budget to go on", file=sys.stderr)
                break
            if interrupted.is_set() and step < end:
                result.stopped = "interrupted"
                bar.write(f"{stage.name}: interrupted after step {step} of {config.steps}; checkpoint saved, "
                          "rerun the same command to resume", file=sys.stderr)
                break
        if step == config.steps and result.stopped == "done":
            earlier = [row for row in read_log(folder) if row["kind"] == "eval" and row["step"] == step]
            result.last_eval = _metrics(earlier[-1]) if earlier else _evaluate(stage, folder, step, log)
        elif step == end < config.steps:
            result.stopped = "stop_after"
    bar.close()
    result.step, result.seconds = step, seconds
    return result


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in ("step", "kind")}


def _set_mode(stage: Stage, train: bool) -> None:
    for module in stage.modules.values():
        module.train(train)


def _evaluate(stage: Stage, folder: Path, step: int, log) -> dict[str, float]:
    _set_mode(stage, train=False)
    with _forked_rng(), torch.no_grad():
        metrics = {k: float(v) for k, v in stage.evaluate(step, folder).items()}
    _set_mode(stage, train=True)
    if metrics:
        log.write(json.dumps({"step": step, "kind": "eval", **metrics}) + "\n")
        log.flush()
    return metrics


@contextmanager
def _forked_rng() -> Iterator[None]:
    states = _rng_states()
    try:
        yield
    finally:
        _set_rng_states(states)


def _rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def _save(stage: Stage, folder: Path, recipe: dict, step: int, seconds: float) -> None:
    state = {
        "recipe": recipe, "step": step, "seconds": seconds, "rng": _rng_states(), "extra": stage.extra_state(),
        **{kind: {name: obj.state_dict() for name, obj in getattr(stage, kind).items()}
           for kind in ("modules", "optimizers", "schedulers")},
    }
    tmp = folder / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, folder / CHECKPOINT)


def _resume(stage: Stage, folder: Path, recipe: dict) -> tuple[int, float]:
    path = folder / CHECKPOINT
    if not path.is_file():
        return 0, 0.0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise MusicsteerError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from e
    if state.get("recipe") != recipe:
        raise MusicsteerError(f"{path} was made by another recipe ({_difference(state.get('recipe'), recipe)}); "
                              "use another folder, or delete the checkpoint to start over")
    for kind in ("modules", "optimizers", "schedulers"):
        for name, obj in getattr(stage, kind).items():
            obj.load_state_dict(state[kind][name])
    stage.load_extra_state(state["extra"])
    _set_rng_states(state["rng"])
    return int(state["step"]), float(state["seconds"])


def _difference(old: Any, new: Any, path: str = "") -> str:
    """The first place two recipes differ, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return _difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    return f"{path or 'recipe'}: {old!r} -> {new!r}"


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (a killed run's steps after its last checkpoint, done again on resuming)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


@contextmanager
def _deferred_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the event instead of raising mid-step (a half-done step cannot be checkpointed)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():  # a second Ctrl-C: the user means it
            signal.default_int_handler(signum, frame)
        event.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def read_log(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of `folder`/log.jsonl as dicts (lines cut short by a kill are skipped)."""
    rows = []
    path = Path(folder) / LOG
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_log(folder: str | os.PathLike, png: str | os.PathLike, smooth: int = 50) -> Path:
    """Draw every loss of log.jsonl (moving average over `smooth` steps) and every eval metric, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = read_log(folder)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "kind") and isinstance(value, (int, float)) and math.isfinite(value):
                name = f"{row['kind']}: {key}"
                series.setdefault(name, ([], []))[0].append(row["step"])
                series[name][1].append(value)
    if not series:
        raise MusicsteerError(f"{Path(folder) / LOG}: nothing to plot")
    cols = min(3, len(series))
    rows_n = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 2.6 * rows_n), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, sorted(series.items()), strict=False):
        if name.startswith("train") and len(values) > smooth:
            kernel = np.ones(smooth) / smooth
            values = np.convolve(values, kernel, mode="valid").tolist()
            steps = steps[smooth - 1:]
        ax.plot(steps, values, lw=1, marker="o" if name.startswith("eval") else None, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return Path(png)

