"""`musicsteer toy train` end to end on a tiny corpus of real WAV files, with the plan table (musicsteer/toy/plan.py
PLAN, the one place of step counts and recipes) replaced by tiny recipes and few steps, in process (monkeypatch)
or in the child's own code: both stages run, a SIGTERM mid-decoder stops it with the checkpoint saved, a rerun
continues with the decoder and a third does nothing more, a budget stop, the model loads, bad input is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy_corpus import TINY_CODEC as CODEC
from toy_corpus import TINY_DECODER as DECODER
from toy_corpus import write_corpus

from musicsteer.cli import main
from musicsteer.engine.loading import load_model
from musicsteer.toy import plan
from musicsteer.toy.training import read_log

TINY = (plan.StagePlan("codec", steps=3, share=0.6, checkpoint_every=2, recipe=CODEC),
        plan.StagePlan("decoder", steps=6, share=1.0, checkpoint_every=4, eval_every=3, recipe=DECODER))
# The child process builds the same table (the recipes above, by their repr) and signals itself (a real SIGTERM
# through the console script's handlers) at decoder step 3 (argv[1] "step": mid-stage, training.py's handler) or
# as the decoder stage is built (argv[1] "build": between stages, the CLI's own), the same moment every time.
CHILD = f"""
import os, signal, sys
from musicsteer.toy import plan
from musicsteer.toy.plan import StagePlan
from musicsteer.toy.codec import CodecRecipe
from musicsteer.toy.decoder import DecoderRecipe, DecoderStage
plan.PLAN = {TINY!r}
step, build = DecoderStage.train_step, DecoderStage.__init__
def train_step(self, n):
    if n == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return step(self, n)
def init(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    build(self, *args, **kwargs)
if sys.argv[1] == "step":
    DecoderStage.train_step = train_step
else:
    DecoderStage.__init__ = init
sys.argv = ["musicsteer", *sys.argv[2:]]
from musicsteer.cli import entry
entry()
"""


@pytest.fixture(autouse=True)
def tiny_plan(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plan, "PLAN", TINY)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the command sets --threads


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def train_steps(folder: Path) -> list[int]:
    return [row["step"] for row in read_log(folder) if row["kind"] == "train"]


def test_interrupted_then_resumed_then_nothing_more(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    child = interrupted(corpus, run, "step")
    assert "Traceback" not in child.stderr
    assert "interrupted in the decoder stage; checkpoint saved. To resume: musicsteer toy train" in child.stderr
    assert plan.finished(run, "codec") and not plan.finished(run, "decoder")
    assert torch.load(run / "decoder" / "checkpoint.pt", weights_only=False)["step"] == 4  # the step in flight ends
    codec_log = (run / "codec" / "log.jsonl").read_bytes()

    assert main(["toy", "train", str(corpus), str(run), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "codec: 3 of 3 steps" in out and "finished earlier" in out
    assert "decoder: 6 of 6 steps" in out and ", done; held out: held_out_loss" in out
    final = run / "decoder" / "model"
    assert f"model: {final} (try: musicsteer render --model {final} --prompt jazz)" in out
    assert (run / "codec" / "log.jsonl").read_bytes() == codec_log  # the finished codec was not touched
    assert train_steps(run / "decoder") == [1, 2, 3, 4, 5, 6]  # resumed at 4, nothing done twice
    lm = load_model(str(final), device="cpu")
    assert (lm.num_codebooks, lm.codebook_size, lm.d_model) == (4, 2048, 32)

    logs = {name: (run / name / "log.jsonl").read_bytes() for name in ("codec", "decoder")}
    mtime = (final / "model.safetensors").stat().st_mtime_ns
    assert main(["toy", "train", str(corpus), str(run), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2
    assert {name: (run / name / "log.jsonl").read_bytes() for name in logs} == logs
    assert (final / "model.safetensors").stat().st_mtime_ns == mtime


def interrupted(corpus: Path, run: Path, where: str) -> subprocess.CompletedProcess:
    child = subprocess.run([sys.executable, "-c", CHILD, where, "toy", "train", str(corpus), str(run), "--threads",
                            "1"], capture_output=True, text=True, timeout=300)
    assert child.returncode == 130, child.stderr[-3000:]
    return child


def test_interrupted_between_stages(corpus: Path, tmp_path: Path) -> None:
    """A SIGTERM outside a stage's steps (loading, encoding the codes) is the CLI's: one line, how to resume."""
    run = tmp_path / "run"
    child = interrupted(corpus, run, "build")
    assert "Traceback" not in child.stderr
    assert "interrupted; finished stages and checkpoints are kept. To resume: musicsteer toy train" in child.stderr
    assert plan.finished(run, "codec") and not (run / "decoder" / "checkpoint.pt").exists()


def test_budget_stop_then_larger_budget_goes_on(corpus: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    # a budget of 3.6 microseconds: any step is longer, so the codec stops after its first (training.py's rule)
    assert main(["toy", "train", str(corpus), str(run), "--threads", "1", "--hours", "1e-9"]) == 1
    captured = capsys.readouterr()
    assert "codec: 1 of 3 steps" in captured.out and "budget" in captured.out
    assert "stopped at the 1e-09 h budget in the codec stage; checkpoint saved. To go on:" in captured.err
    assert not (run / "decoder").exists()
    assert main(["toy", "train", str(corpus), str(run), "--threads", "1"]) == 0
    assert train_steps(run / "codec") == [1, 2, 3] and plan.finished(run, "decoder")


@pytest.mark.parametrize("case", ["no corpus", "not a corpus", "no corpus.json", "missing clip", "run is a file",
                                  "run is a stranger", "other seed", "hours 0", "hours -1"])
def test_bad_input_is_one_line_before_any_work(case: str, corpus: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run, source, flags = tmp_path / "run", corpus, []
    if case == "no corpus":
        source = tmp_path / "absent"
    elif case in ("not a corpus", "no corpus.json", "missing clip"):
        source = tmp_path / "copy"
        source.mkdir()
        if case != "not a corpus":
            (source / "manifest.csv").write_bytes((corpus / "manifest.csv").read_bytes())
        if case == "missing clip":
            (source / "corpus.json").write_bytes((corpus / "corpus.json").read_bytes())
    elif case == "run is a file":
        run.write_text("x")
    elif case == "run is a stranger":
        run.mkdir()
        (run / "notes.txt").write_text("mine")
    elif case == "other seed":
        run.mkdir()
        (run / plan.RUN_STAMP).write_text(json.dumps({"seed": 5, "corpus": plan.check_corpus(corpus)}))
    else:
        flags = ["--hours", case.split()[1]]
    before = sorted(tmp_path.rglob("*"))
    try:
        code = main(["toy", "train", str(source), str(run), *flags])
    except SystemExit as exit_:  # (argparse's errors exit from main; the console script's result is the same)
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("musicsteer: error: ") and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing made
