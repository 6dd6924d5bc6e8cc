"""`musicsteer toy train`: the stages that exist, in order, in one run folder, within one wall-clock budget.

RUN/codec (codec.py's run folder; its model in RUN/codec/model), then RUN/judge (judge.py's CLAP, trained on
the corpus alone; RUN/judge/model), then RUN/decoder (decoder.py's, trained on RUN/codec/model; the MusicGen in
RUN/decoder/model), then RUN/vectors (vectors.py: the probe pipeline on the held-out clips with that MusicGen;
no training loop, a few minutes). A stage whose output is finished (its toy_<stage>.json written, the last thing
a stage saves: `facts_path`) is skipped; one with a checkpoint is resumed (training.py); the rest start.
`PLAN` is the one table of step counts, budget shares and cadences (measured per stage, docs/toy.md);
RUN/run.json names what the run trains on (seed, corpus), so a rerun against another is refused up front.
Budget: stage i may spend, in all over its resumptions, `share` of what the stages before it left of
--hours (the last stage: all of it); training.py stops a stage at its budget with its checkpoint saved. The
vectors stage has no steps to stop between: it runs once the decoder is done, whatever is left.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.errors import MusicsteerError, shown

DEFAULT_HOURS = 6.0
RUN_STAMP = "run.json"


@dataclass(frozen=True)
class StagePlan:
    name: str  # the stage, and its folder in RUN
    steps: int  # the schedule's length (fixed for a run: a checkpoint of other steps is refused)
    share: float  # of the budget left when it starts; the last stage takes all that is left
    checkpoint_every: int = 500
    eval_every: int = 0  # 0: at the end only
    # None: the stage's default recipe (CodecRecipe(), JudgeRecipe(), DecoderRecipe()); for vectors, make_vectors'
    # keyword arguments ({"segment_seconds": 0.5}: the tests' short clips)
    recipe: Any = None


# Measured (docs/toy.md): codec ~1 s a step on 2 cores (10,000 steps ~2.8 h); judge 0.6-0.8 s a step (32 clips, 1
# thread, load 3-5; on the 400-clip corpus 400 steps took 254-323 s with their evals, held-out zero-shot accuracy
# 1.0 from step 200), so 2,500 steps (~22 epochs of 3,600 clips) ~25-35 min plus ~3 min for the 4,000 clips'
# features; decoder ~2 s a step (3,800 ~2.1 h); vectors: no steps (probe extract of the 400 held-out clips, twice).
PLAN: tuple[StagePlan, ...] = (
    StagePlan("codec", steps=10_000, share=0.6, eval_every=1000),
    StagePlan("judge", steps=2_500, share=0.2, eval_every=500),
    StagePlan("decoder", steps=3_800, share=1.0, eval_every=500),
    StagePlan("vectors", steps=1, share=1.0),
)


@dataclass
class Outcome:
    name: str
    step: int
    steps: int
    stopped: str  # training.py's TrainResult.stopped, or "finished earlier"
    seconds: float | None
    held_out: dict[str, float]


def model_dir(run: Path, name: str) -> Path:
    return run / name / "model"


def facts_path(run: Path, name: str) -> Path:
    """toy_<stage>.json, the last thing a stage writes: beside its model (RUN/<stage>/model), or in RUN/vectors."""
    return (run / name if name == "vectors" else model_dir(run, name)) / f"toy_{name}.json"


def finished(run: Path, name: str) -> bool:
    """The stage's output is saved whole: toy_<stage>.json is written after save_pretrained (codec.py, judge.py,
    decoder.py) or after the vectors files (vectors.py)."""
    return facts_path(run, name).is_file()


def check_corpus(corpus: Path) -> dict[str, Any]:
    """What `toy corpus` writes (corpus.py): corpus.json, manifest.csv with its columns, train and held-out rows,
    every clip there. Returns the stamp a run records ({"seed", "version", "clips"}). Raises MusicsteerError."""
    from .corpus import COLUMNS

    where = shown(str(corpus))
    if not corpus.is_dir():
        raise MusicsteerError(f"CORPUS {where} is not a folder; make one with `musicsteer toy corpus`")
    try:
        made = json.loads((corpus / "corpus.json").read_text())
        with open(corpus / "manifest.csv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, ValueError) as e:
        raise MusicsteerError(f"CORPUS {where} is not a toy corpus ({getattr(e, 'strerror', None) or e}); make one "
                              "with `musicsteer toy corpus`") from None
    missing = [c for c in COLUMNS if c not in columns]
    if not isinstance(made, dict) or missing:
        raise MusicsteerError(f"CORPUS {where} is not a toy corpus (manifest.csv lacks {', '.join(missing)})")
    for split in ("train", "heldout"):
        if not any(r["split"] == split for r in rows):
            raise MusicsteerError(f"CORPUS {where} has no {split} clips; render more with `musicsteer toy corpus`")
    absent = [r["path"] for r in rows if not (corpus / r["path"]).is_file()]
    if absent:
        raise MusicsteerError(f"CORPUS {where} lacks {len(absent)} of its clips (first: {shown(absent[0])}); rerun "
                              "`musicsteer toy corpus` to complete it")
    return {"seed": made.get("seed"), "version": made.get("version"), "clips": len(rows)}


def check_run(run: Path, stamp: dict[str, Any]) -> None:
    """RUN must be new, empty, or a run of this stamp (then resumed). Raises MusicsteerError."""
    where = shown(str(run))
    try:
        if run.exists() and not run.is_dir():
            raise MusicsteerError(f"RUN {where} is a file, not a folder")
        if run.is_dir() and any(run.iterdir()):
            if not (run / RUN_STAMP).is_file():
                raise MusicsteerError(f"RUN {where} exists and is not empty (and is no toy run): choose a new folder")
            made = json.loads((run / RUN_STAMP).read_text())
            if made != stamp:
                differ = ", ".join(f"{k} {made.get(k)!r} (now {v!r})" for k, v in stamp.items() if made.get(k) != v)
                raise MusicsteerError(f"RUN {where} is a run of another corpus or seed: {differ}; use a new folder")
    except (OSError, ValueError) as e:
        raise MusicsteerError(f"cannot use RUN {where}: {getattr(e, 'strerror', None) or e}") from None


def spent(run: Path, name: str) -> float | None:
    """Wall-clock seconds the stage has trained, over its resumptions (its checkpoint's), or None without one."""
    import torch

    from .training import CHECKPOINT

    path = run / name / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return float(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["seconds"])
    except (OSError, RuntimeError, EOFError, ValueError, KeyError) as e:
        raise MusicsteerError(f"{path}: unreadable checkpoint ({e}); delete it to start the stage over") from e


def train_all(corpus: Path, run: Path, hours: float, threads: int, seed: int, progress: bool = True,
              say: Any = print) -> list[Outcome]:
    """Run PLAN's stages in order in `run` (checked: check_corpus, check_run). Stops at the first stage that does
    not finish (budget or interruption; its checkpoint saved). Returns an Outcome per stage reached."""
    from .training import TrainConfig

    stamp = {"seed": seed, "corpus": check_corpus(corpus)}
    check_run(run, stamp)
    run.mkdir(parents=True, exist_ok=True)
    (run / RUN_STAMP).write_text(json.dumps(stamp) + "\n")
    left = hours * 3600.0
    outcomes = []
    for i, plan in enumerate(PLAN):
        budget = left if i == len(PLAN) - 1 else plan.share * left
        if finished(run, plan.name):
            facts = json.loads(facts_path(run, plan.name).read_text())
            seconds = spent(run, plan.name)
            outcome = Outcome(plan.name, facts.get("steps", plan.steps), plan.steps, "finished earlier", seconds,
                              facts.get("held_out", {}))
        else:
            config = TrainConfig(steps=plan.steps, seed=seed, threads=threads, checkpoint_every=plan.checkpoint_every,
                                 eval_every=plan.eval_every, budget_s=budget, progress=progress)
            result = _run_stage(plan, corpus, run, config)
            outcome = Outcome(plan.name, result.step, plan.steps, result.stopped, result.seconds, result.last_eval)
        outcomes.append(outcome)
        say(describe(outcome))
        if outcome.stopped not in ("done", "finished earlier"):
            break
        left -= budget if outcome.seconds is None else outcome.seconds  # (no checkpoint left: count its all)
    return outcomes


def _run_stage(plan: StagePlan, corpus: Path, run: Path, config: Any) -> Any:
    folder = run / plan.name
    if plan.name == "codec":
        from .codec import train_codec

        return train_codec(corpus, folder, config, plan.recipe)
    if plan.name == "judge":
        from .judge import train_judge

        return train_judge(corpus, folder, config, plan.recipe)
    if plan.name == "decoder":
        from .decoder import train_decoder

        return train_decoder(corpus, folder, config, plan.recipe, model_dir(run, "codec"))
    if plan.name == "vectors":
        from .training import TrainResult
        from .vectors import make_vectors

        facts = make_vectors(corpus, run, model_dir(run, "decoder"), threads=config.threads, **(plan.recipe or {}))
        return TrainResult(1, "done", facts["seconds"], last_eval=facts["held_out"])
    raise MusicsteerError(f"no stage called {plan.name!r}")


def describe(outcome: Outcome) -> str:
    """One line: the stage, its steps, why it stopped, its time and held-out figures."""
    took = "" if outcome.seconds is None else f" in {outcome.seconds / 3600:.2f} h"
    figures = ", ".join(f"{k} {v:.4g}" for k, v in outcome.held_out.items())
    return (f"{outcome.name}: {outcome.step} of {outcome.steps} steps{took}, {outcome.stopped}"
            f"{'; held out: ' + figures if figures else ''}")
