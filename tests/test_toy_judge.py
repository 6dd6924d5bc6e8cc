"""The toy judge stage (musicsteer/toy/judge.py) on a few seconds of real WAV files: a few steps lower the
contrastive loss, the saved folder loads through `ClapScorer` (what `eval --clap FOLDER` uses) and scores the
held-out clips as training's own zero-shot evaluation did (toy_judge.json's confusion matrix), a stopped run
resumes bit-identical, and identical texts in a batch are positives of each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_corpus import TINY_JUDGE, one_thread, write_corpus
from transformers import ClapModel

from musicsteer.evaluation.clap import ClapScorer
from musicsteer.evaluation.protocol import CLAP_TEMPLATE
from musicsteer.toy.codec import load_clips
from musicsteer.toy.judge import (
    JudgeStage,
    build_judge,
    confusion,
    contrastive_loss,
    judge_processor,
    load_examples,
    train_judge,
    zero_shot,
)
from musicsteer.toy.training import TrainConfig, read_log, train

STEPS = 40
CONFIG = TrainConfig(steps=STEPS, checkpoint_every=8, eval_every=20, progress=False)
GENRES = ["jazz", "rock"]

one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("judge")
    result = train_judge(corpus, run, CONFIG, TINY_JUDGE)
    assert result.stopped == "done" and result.step == STEPS
    return run


def stage(corpus: Path) -> JudgeStage:
    processor = judge_processor(TINY_JUDGE)
    return JudgeStage(load_examples(corpus, "train", processor), load_examples(corpus, "held-out", processor),
                      build_judge(TINY_JUDGE), processor, TINY_JUDGE, STEPS)


def fixed_loss(model: ClapModel, corpus: Path) -> float:
    """The contrastive loss of the training clips with their full captions, no gain or masks, nothing updated."""
    judge = stage(corpus)
    judge.model = model.eval()
    features = torch.from_numpy(np.stack([e.features for e in judge.examples]))[:, None]
    with torch.no_grad():
        return judge.loss(features, [e.caption for e in judge.examples]).item()


def test_trains_evaluates_and_saves(corpus: Path, trained: Path) -> None:
    rows = read_log(trained)
    assert [row["step"] for row in rows if row["kind"] == "train"] == list(range(1, STEPS + 1))
    evals = [row for row in rows if row["kind"] == "eval"]
    assert [row["step"] for row in evals] == [20, 40]
    assert all(0.0 <= row["zero_shot_accuracy"] <= 1.0 and 0.0 < row["mean_p_true"] < 1.0 for row in evals)
    # (after 40 steps: the audio tower's input BatchNorm needs 20-30 to learn the features' dB range in eval mode)
    assert fixed_loss(ClapModel.from_pretrained(trained / "model"), corpus) < 0.8 * fixed_loss(
        build_judge(TINY_JUDGE), corpus)
    for png in ("eval/confusion-0000020.png", "eval/confusion-0000040.png", "loss-curves.png"):
        assert (trained / png).read_bytes()[:4] == b"\x89PNG"
    facts = json.loads((trained / "model" / "toy_judge.json").read_text())
    report = facts["zero_shot"]
    assert facts["steps"] == STEPS and facts["held_out"]["zero_shot_accuracy"] == evals[-1]["zero_shot_accuracy"]
    assert report["template"] == CLAP_TEMPLATE and report["genres"] == GENRES and report["clips"] == 2
    assert np.asarray(report["confusion"]).sum(axis=1).tolist() == [1, 1]  # one held-out clip of each genre


def test_saved_judge_scores_through_clap_scorer_as_trained(corpus: Path, trained: Path) -> None:
    """`ClapScorer` (eval's CLAP path: the saved processor, WAVs read at its rate) gives the probabilities that
    training's zero-shot evaluation computed from its own features, so toy_judge.json's figures are eval's."""
    scorer = ClapScorer(str(trained / "model"))
    assert scorer.sample_rate == 32000 and next(scorer.model.parameters()).dtype == torch.float32
    clips = load_clips(corpus, "held-out")
    audios = [scorer.load(corpus / clip.path) for clip in clips]
    scored = scorer.scores(audios, GENRES)
    processor = judge_processor(TINY_JUDGE)
    features = np.stack([e.features for e in load_examples(corpus, "held-out", processor)])
    trained_model = ClapModel.from_pretrained(trained / "model").eval()
    assert np.allclose(scored, zero_shot(trained_model, processor, features, GENRES), atol=1e-5)
    report = json.loads((trained / "model" / "toy_judge.json").read_text())["zero_shot"]
    assert confusion([c.genre for c in clips], scored, GENRES).tolist() == report["confusion"]


def test_stopped_run_resumes_bit_identical(corpus: Path, trained: Path, tmp_path: Path) -> None:
    first = train(stage(corpus), tmp_path, TrainConfig(**{**CONFIG.__dict__, "stop_after": 21}))
    assert first.stopped == "stop_after"  # after a checkpoint (16) and an eval (20)
    resumed = stage(corpus)
    train(resumed, tmp_path, CONFIG)
    straight = ClapModel.from_pretrained(trained / "model")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_identical_texts_are_positives() -> None:
    """Two jazz clips whose texts are the same ("jazz music"): a judge that matches both clips to both texts is
    right, one that tells the two identical texts apart is not (plain CLIP targets would say the opposite);
    and swapping the two identical columns changes nothing."""
    texts = ["jazz", "jazz", "rock"]
    alike = torch.tensor([[4.0, 4.0, -4.0], [4.0, 4.0, -4.0], [-4.0, -4.0, 4.0]])
    apart = torch.tensor([[4.0, -4.0, -4.0], [-4.0, 4.0, -4.0], [-4.0, -4.0, 4.0]])
    assert contrastive_loss(alike, alike.T, texts) < 0.2 * contrastive_loss(apart, apart.T, texts)
    logits = torch.tensor([[5.0, 1.0, -2.0], [0.5, 4.0, -1.0], [-1.0, 0.0, 3.0]])
    swapped = logits[:, [1, 0, 2]]
    assert torch.allclose(contrastive_loss(logits, logits.T, texts), contrastive_loss(swapped, swapped.T, texts))
