"""The toy judge stage: a small CLAP trained contrastively on the corpus's training clips and their captions.

A transformers `ClapModel` (RoBERTa-style text tower, HTSAT audio tower) at toy sizes, with the decoder's offline
T5 tokenizer (engine/tiny.py: its words are the captions' words) and a `ClapFeatureExtractor` at the corpus's
32 kHz (no resampling: the corpus, the codec and the renders are all 32 kHz). Its window is the corpus's 10 s
clip, so a training clip is seen whole, as `ClapScorer` sees a 10 s render. It learns from the corpus's audio
only, never from the decoder's output, so that it can judge the decoder. `save_pretrained` writes a folder that
`--clap FOLDER` (and, shipped, `--clap toy`) loads like a hub CLAP.

Training (training.py's loop: deterministic, resumable, budgeted):
* every clip's log-mel features are computed once with the processor's own extractor (what scoring computes);
* a step takes `batch_size` clips and gives each a text: its full caption, a short caption (decoder.py's
  `short_caption`: "calm jazz music", ...) or the zero-shot text `TEMPLATE.format(genre)`; and a random gain
  (an exact shift of the dB features), since renders are not all at the corpus's -20 dBFS; to some, a random
  2-10 s piece laid out as the extractor pads audio shorter than its window (a live window, a short render);
  to each, one time and one band mask (SpecAugment);
* the loss is CLIP's symmetric cross-entropy over the batch's audio x text logits, with every row whose text is
  identical counted as a positive (short texts repeat within a batch: "jazz" is not a negative of jazz).
Held out: zero-shot genre accuracy over the held-out clips with `TEMPLATE` (evaluation's default CLAP text,
so `musicsteer eval --clap toy` scores with the text the judge was trained on), the confusion matrix
(eval/confusion-STEP.png; toy_judge.json), and the contrastive loss with the full captions.

Run folder: checkpoint.pt and log.jsonl (training.py), eval/, loss-curves.png, and model/ (save_pretrained of
model and processor, toy_judge.json beside it) once training is done.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, ClapTextConfig

from ..engine import tiny
from ..engine.errors import MusicsteerError
from ..evaluation.protocol import CLAP_TEMPLATE
from .codec import SAMPLE_RATE, load_clips
from .decoder import read_captions, short_caption
from .training import Stage, TrainConfig, TrainResult, batch_indices, plot_log, step_rng, train, warmup_cosine

# The judge's zero-shot text per genre: evaluation's default CLAP template (one definition), trained on.
TEMPLATE = CLAP_TEMPLATE
SILENCE_DB = -100.0  # the extractor's log-mel of silence: 10 log10 of its floor, 1e-10


@dataclass(frozen=True)
class JudgeRecipe:
    mel_bins: int = 32  # log-mel bands (laion's CLAP: 64)
    hop: int = 640  # samples per feature frame: 50 frames/s, as the codec
    window_seconds: int = 10  # the extractor's window: a corpus clip (longer audio is cropped by the scorer)
    spec_size: int = 128  # HTSAT's square input (mel_bins x 4 frequency folds); 512 frames (10 s) fit
    audio_width: int = 32  # HTSAT patch embedding; doubled at each stage
    audio_depths: tuple[int, ...] = (1, 1, 1)
    audio_heads: tuple[int, ...] = (2, 4, 8)
    text_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    max_tokens: int = 192  # captions are at most ~150 tokens of the tiny tokenizer; longer ones are truncated
    projection: int = 64  # the joint embedding
    batch_size: int = 32
    template_share: float = 0.25  # rows whose text is TEMPLATE.format(genre)
    short_share: float = 0.25  # rows given a short caption; the rest their full caption
    gain_db: float = 9.0  # each clip's gain is uniform in +-gain_db
    crop_share: float = 0.25  # rows cut to a random 2-10 s piece, repeat-padded as the extractor pads short audio
    crop_min_frames: int = 100
    mask_frames: int = 50  # SpecAugment: one time mask of up to this many frames (1 s) per clip ...
    mask_bins: int = 4  # ... and one mask of up to this many mel bands, both filled with the clip's mean
    lr: float = 1e-3  # AdamW, betas (0.9, 0.98), warm-up then cosine (CLIP's recipe)
    weight_decay: float = 0.05
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05
    grad_clip: float = 1.0


def build_judge(recipe: JudgeRecipe, seed: int = 0) -> ClapModel:
    """A random-init (seeded) CLAP of the recipe's sizes, for `judge_processor(recipe)`."""
    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(seed)
    text = ClapTextConfig(vocab_size=tiny.TEXT_VOCAB_SIZE, hidden_size=recipe.text_size,
                          num_hidden_layers=recipe.text_layers, num_attention_heads=recipe.text_heads,
                          intermediate_size=recipe.text_ff, projection_dim=recipe.projection,
                          pad_token_id=tokenizer.pad_token_id,
                          max_position_embeddings=recipe.max_tokens + tokenizer.pad_token_id + 2)  # RoBERTa offset
    width = recipe.audio_width * 2 ** (len(recipe.audio_depths) - 1)
    audio = ClapAudioConfig(depths=list(recipe.audio_depths), num_attention_heads=list(recipe.audio_heads),
                            patch_embeds_hidden_size=recipe.audio_width, hidden_size=width,
                            projection_dim=recipe.projection, window_size=8, spec_size=recipe.spec_size,
                            num_mel_bins=recipe.mel_bins, enable_fusion=False)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=recipe.projection)
    return ClapModel(config)


def judge_processor(recipe: JudgeRecipe) -> ClapProcessor:
    """The tiny T5 tokenizer and a 32 kHz ClapFeatureExtractor whose window is `window_seconds`. Training uses
    one, and a fresh one is saved: a tokenizer called with truncation keeps it in its tokenizer.json, and a
    ClapProcessor loaded with it passes that max_length to the feature extractor (every clip cut to 1 frame)."""
    features = ClapFeatureExtractor(feature_size=recipe.mel_bins, sampling_rate=SAMPLE_RATE, hop_length=recipe.hop,
                                    max_length_s=recipe.window_seconds, fft_window_size=1024, frequency_min=50,
                                    frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    return ClapProcessor(feature_extractor=features, tokenizer=tiny.build_tokenizer())


# ---------------------------------------------------------------- data


@dataclass
class Example:
    path: str  # as the manifest names it
    genre: str
    caption: str
    short: dict[str, str]  # mood, instrument: what decoder.short_caption reads
    features: np.ndarray  # (frames, mel_bins) float32: the extractor's log-mel (dB) of the whole clip


def features_of(processor: ClapProcessor, audios: list[np.ndarray], chunk: int = 64) -> np.ndarray:
    """(N, frames, mel_bins) float32: what the processor feeds the model for each (samples,) 32 kHz clip (the
    first window; shorter clips repeat-padded, as scoring does)."""
    extractor = processor.feature_extractor
    out = []
    for start in range(0, len(audios), chunk):
        batch = [a[: extractor.nb_max_samples] for a in audios[start:start + chunk]]
        out.append(extractor(batch, sampling_rate=extractor.sampling_rate, return_tensors="np").input_features[:, 0])
    return np.concatenate(out).astype(np.float32)


def load_examples(corpus: str | os.PathLike, split: str, processor: ClapProcessor) -> list[Example]:
    """The clips of `split` (codec.py's `load_clips`) with their captions and features (the audio is dropped)."""
    clips = load_clips(corpus, split)
    rows = read_captions(corpus)
    features = features_of(processor, [c.audio for c in clips])
    return [Example(c.path, c.genre, rows[c.path]["caption"],
                    {k: rows[c.path].get(k, "") for k in ("mood", "instrument")}, f)
            for c, f in zip(clips, features, strict=True)]


def repeat_padded(features: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-frame piece of features (frames, bins), laid out as the extractor's "repeatpad" lays out
    audio shorter than its window: the piece repeated as many whole times as fit, then silence (its dB floor)."""
    start = int(rng.integers(0, len(features) - length + 1))
    repeats = (len(features) - 1) // length  # (frames - 1 hops span the window)
    out = np.full_like(features, SILENCE_DB)
    out[: repeats * length] = np.tile(features[start:start + length], (repeats, 1))
    return out


def contrastive_loss(logits_per_audio: torch.Tensor, logits_per_text: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """CLIP's symmetric cross-entropy where the targets of row i are every column whose text equals text i."""
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=logits_per_audio.dtype)
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric: the same targets for both directions
    audio = -(targets * logits_per_audio.log_softmax(dim=1)).sum(dim=1).mean()
    text = -(targets * logits_per_text.log_softmax(dim=1)).sum(dim=1).mean()
    return (audio + text) / 2


@torch.no_grad()
def zero_shot(model: ClapModel, processor: ClapProcessor, features: np.ndarray, labels: list[str],
              template: str = TEMPLATE, chunk: int = 64) -> np.ndarray:
    """(N, labels) probabilities: softmax over `template.format(label)` of logits_per_audio, as `ClapScorer.scores`
    computes them, from features (N, frames, mel_bins)."""
    text = processor.tokenizer([template.format(label) for label in labels], padding=True, return_tensors="pt")
    rows = []
    for start in range(0, len(features), chunk):
        audio = torch.from_numpy(features[start:start + chunk])[:, None]
        logits = model(input_ids=text.input_ids, attention_mask=text.attention_mask, input_features=audio)
        rows.append(logits.logits_per_audio.float().softmax(dim=-1).numpy())
    return np.concatenate(rows)


def confusion(truth: list[str], probabilities: np.ndarray, labels: list[str]) -> np.ndarray:
    """(labels, labels) counts: row = the true label, column = the most probable one."""
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for genre, row in zip(truth, probabilities.argmax(axis=1), strict=True):
        matrix[labels.index(genre), row] += 1
    return matrix


def plot_confusion(matrix: np.ndarray, labels: list[str], png: Path, title: str) -> Path:
    """The confusion matrix as row shares (recall per true genre), counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.5 + 0.8 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(shares, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("judged")
    ax.set_ylabel("true genre")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if shares[row, col] < 0.6 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# ---------------------------------------------------------------- stage


class JudgeStage(Stage):
    """The CLAP for `train`: model, AdamW, warm-up + cosine schedule."""

    name = "judge"

    def __init__(self, train_examples: list[Example], eval_examples: list[Example], model: ClapModel,
                 processor: ClapProcessor, recipe: JudgeRecipe, steps: int, seed: int = 0) -> None:
        super().__init__()
        if len(train_examples) < 2:
            raise MusicsteerError("the judge needs at least 2 training clips (a contrastive batch)")
        self.recipe, self.seed, self.steps = recipe, seed, steps
        self.examples, self.eval_examples = train_examples, eval_examples
        self.genres = sorted({e.genre for e in train_examples} | {e.genre for e in eval_examples})
        self.model, self.processor = model, processor
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98),
                                           weight_decay=recipe.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.modules, self.optimizers, self.schedulers = (
            {"clap": self.model}, {"adamw": self.optimizer}, {"lr": self.scheduler})
        self.report: dict[str, Any] | None = None  # the last eval's zero-shot report (toy_judge.json)

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.recipe.warmup_steps, self.steps, self.recipe.final_lr_fraction)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.recipe), "template": TEMPLATE, "train_clips": [e.path for e in self.examples]}

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """Batch `step` (a function of seed and step): features (B, 1, frames, mel_bins), each clip's with its gain
        added (dB) and its masks, and each clip's text."""
        r = self.recipe
        rng = step_rng(self.seed, step)
        chosen = [self.examples[i] for i in batch_indices(len(self.examples), r.batch_size, self.seed, step)]
        texts, rows = [], []
        for example in chosen:
            draw = rng.random()
            if draw < r.template_share:
                texts.append(TEMPLATE.format(example.genre))
            elif draw < r.template_share + r.short_share:
                texts.append(short_caption(example, rng))
            else:
                texts.append(example.caption)
            row = example.features + np.float32(rng.uniform(-r.gain_db, r.gain_db))
            if rng.random() < r.crop_share:
                row = repeat_padded(row, int(rng.integers(r.crop_min_frames, len(row))), rng)
            frames, bins = row.shape
            for axis, most, size in ((0, r.mask_frames, frames), (1, r.mask_bins, bins)):
                width = int(rng.integers(0, min(most, size - 1) + 1))
                start = int(rng.integers(0, size - width + 1))
                (row[start:start + width] if axis == 0 else row[:, start:start + width])[...] = row.mean()
            rows.append(row)
        return torch.from_numpy(np.stack(rows))[:, None], texts

    def loss(self, features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        text = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.recipe.max_tokens,
                                        return_tensors="pt")
        out = self.model(input_ids=text.input_ids, attention_mask=text.attention_mask, input_features=features)
        return contrastive_loss(out.logits_per_audio, out.logits_per_text, texts)

    def train_step(self, step: int) -> dict[str, float]:
        loss = self.loss(*self.batch(step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), "grad_norm": float(norm), "lr": lr,
                "logit_scale": self.model.logit_scale_a.detach().exp().item()}

    def zero_shot_report(self) -> dict[str, Any]:
        """Zero-shot genre accuracy of the held-out clips with TEMPLATE, per genre, and the confusion matrix."""
        truth = [e.genre for e in self.eval_examples]
        p = zero_shot(self.model, self.processor, np.stack([e.features for e in self.eval_examples]), self.genres)
        matrix = confusion(truth, p, self.genres)
        true_p = p[np.arange(len(truth)), [self.genres.index(g) for g in truth]]
        return {"template": TEMPLATE, "genres": self.genres, "clips": len(truth),
                "accuracy": float(np.trace(matrix) / max(1, matrix.sum())), "mean_p_true": float(true_p.mean()),
                "per_genre": {g: float(matrix[i, i] / max(1, matrix[i].sum())) for i, g in enumerate(self.genres)},
                "confusion": matrix.tolist()}

    def evaluate(self, step: int, folder: Path) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        self.report = self.zero_shot_report()
        (folder / "eval").mkdir(exist_ok=True)
        plot_confusion(np.asarray(self.report["confusion"]), self.genres, folder / "eval" / f"confusion-{step:07d}.png",
                       f"judge after {step} steps: held-out zero-shot accuracy {self.report['accuracy']:.3f}")
        losses = []
        for start in range(0, len(self.eval_examples), self.recipe.batch_size):
            chunk = self.eval_examples[start:start + self.recipe.batch_size]
            if len(chunk) > 1:
                features = torch.from_numpy(np.stack([e.features for e in chunk]))[:, None]
                losses.append(self.loss(features, [e.caption for e in chunk]).item())
        caption_loss = {"held_out_caption_loss": float(np.mean(losses))} if losses else {}
        return {"zero_shot_accuracy": self.report["accuracy"], "mean_p_true": self.report["mean_p_true"],
                **caption_loss}


def train_judge(corpus: str | os.PathLike, folder: str | os.PathLike, config: TrainConfig,
                recipe: JudgeRecipe | None = None) -> TrainResult:
    """Train (or resume) the judge on `corpus` in `folder`; once done, save it (and its processor) to folder/model
    with toy_judge.json: recipe, steps, held-out metrics and the zero-shot report (confusion matrix)."""
    recipe = recipe or JudgeRecipe()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    model, processor = build_judge(recipe, config.seed), judge_processor(recipe)
    stage = JudgeStage(load_examples(corpus, "train", processor), load_examples(corpus, "held-out", processor),
                       model, processor, recipe, config.steps, config.seed)
    result = train(stage, folder, config)
    plot_log(folder, folder / "loss-curves.png")
    if result.stopped == "done":
        if stage.report is None:  # (resumed after the last eval: the model is the same, its report is not kept)
            stage.model.eval()
            stage.report = stage.zero_shot_report()
        save_judge(stage.model, judge_processor(recipe), folder / "model",
                   {"recipe": asdict(recipe), "steps": result.step, "held_out": result.last_eval,
                    "zero_shot": stage.report, "trained_on": "the corpus's train split (audio and captions)"})
    return result


def save_judge(model: ClapModel, processor: ClapProcessor, folder: str | os.PathLike,
               facts: dict[str, Any] | None = None) -> Path:
    """save_pretrained model and processor into `folder` (what `--clap FOLDER` loads), toy_judge.json beside."""
    folder = Path(folder)
    with tiny.no_progress_bars():
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    (folder / "toy_judge.json").write_text(json.dumps(facts or {}, indent=1) + "\n")
    return folder
