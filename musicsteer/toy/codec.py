"""The toy codec stage: a small transformers `EncodecModel` trained on the toy corpus, saved with save_pretrained.

The architecture is musicgen-small's audio encoder (32 kHz mono, upsampling ratios 8·5·4·4 = hop 640 →
50 frames/s, 4 residual codebooks of 2048, non-causal convs, LSTM) with fewer channels, so that it trains
on 2 CPU cores in hours. The quantizer trains as EnCodec's did (quantizer.py: EMA codebooks, commitment,
straight-through, k-means init, dead-code replacement) in transformers' own buffers, so the saved folder
loads with `EncodecModel.from_pretrained`, and its codes and decode are transformers' (and the engine's
streaming decoder's). Loss: multi-scale log-mel L1 + time-domain L1 + commitment (losses.py).

Run folder: checkpoint.pt and log.jsonl (training.py), eval/spectrograms-STEP.png (held-out originals
beside their round-trips), loss-curves.png, and model/ (save_pretrained) once training is done.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from transformers import EncodecConfig, EncodecModel

from ..engine.errors import MusicsteerError
from ..engine.loading import check_model_folder
from ..engine.tiny import no_progress_bars
from . import quantizer
from .losses import MultiScaleMel, plot_spectrograms, si_snr
from .training import Stage, TrainConfig, TrainResult, batch_indices, plot_log, step_rng, train, warmup_cosine

SAMPLE_RATE = 32000
HOP = 640  # samples per frame: 8 * 5 * 4 * 4
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class CodecRecipe:
    num_filters: int = 16  # channels of the first conv; doubled at each of the 4 downsamplings (musicgen: 64)
    hidden_size: int = 64  # latent and codeword dimension (musicgen: 128)
    lstm_layers: int = 1  # (musicgen: 2)
    codebooks: int = 4
    codebook_size: int = 2048
    segment_frames: int = 50  # training crop: 50 frames = 1 s
    batch_size: int = 8
    lr: float = 1e-3  # Adam; with betas (0.5, 0.9) a 4 M EnCodec learned transients where 3e-4 did not
    beta1: float = 0.5
    beta2: float = 0.9
    warmup_steps: int = 200  # linear lr warmup, then cosine to final_lr_fraction * lr
    final_lr_fraction: float = 0.1
    grad_clip: float = 5.0
    quantize_from: int = 0  # steps of plain autoencoder before the codebooks are k-means'd in
    init_frames: int = 8192  # encoder frames pooled for the k-means init (>= codebook_size)
    ema_decay: float = 0.99
    dead_uses: float = 4.0  # a code not picked in the steps a code of average use is picked this often is dead
    track_offset: bool = True  # move level 0's codewords with the encoder's common offset, measured on a probe
    probe_clips: int = 4  # 1 s of each of the first training clips: the probe
    mel_weight: float = 1.0
    l1_weight: float = 0.1  # EnCodec's lambda_t
    commit_weight: float = 1.0
    # Penalty on the squared norm of the encoder's mean frame: without it that common offset random-walks (1-3 a
    # step by step 100-150, the frames' spread 0.03-0.05), with 1.0 it moves 0.08-0.15 a step, level 0 picks ~220
    # codes in a batch of 400 frames instead of 40-120, and the mel loss is the same by step 50 (measured).
    offset_weight: float = 1.0
    eval_clips: int = 8
    eval_frames: int = 200  # 4 s of each held-out clip's middle


def codec_config(recipe: CodecRecipe) -> EncodecConfig:
    """musicgen-small's EnCodec (facebook/encodec_32khz) with the recipe's sizes."""
    bandwidth = recipe.codebooks * math.log2(recipe.codebook_size) * (SAMPLE_RATE / HOP) / 1000  # kbit/s
    return EncodecConfig(
        sampling_rate=SAMPLE_RATE, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[bandwidth],
        codebook_size=recipe.codebook_size, num_filters=recipe.num_filters, hidden_size=recipe.hidden_size,
        codebook_dim=recipe.hidden_size, num_lstm_layers=recipe.lstm_layers, use_causal_conv=False,
        normalize=False, audio_channels=1, norm_type="weight_norm", pad_mode="reflect", kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, num_residual_layers=1, compress=2, use_conv_shortcut=False,
        trim_right_ratio=1.0, chunk_length_s=None, overlap=None,
    )


@dataclass
class Clip:
    path: str  # as the manifest names it, relative to the corpus folder
    genre: str
    audio: np.ndarray  # (samples,) float32 at 32 kHz


def load_clips(corpus: str | os.PathLike, split: str) -> list[Clip]:
    """The clips of `split` ("train", or "held-out": every row whose split is not "train") of a corpus folder:
    manifest.csv with at least the columns path (relative to the folder), genre, split; 32 kHz mono WAVs.
    Raises MusicsteerError (one line) on a missing manifest or column, an unreadable or wrong-rate file."""
    folder = Path(corpus)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise MusicsteerError(f"{folder} is not a toy corpus (no {MANIFEST}); make one with `musicsteer toy corpus`")
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"path", "genre", "split"} - set(rows[0] if rows else {})
    if missing:
        raise MusicsteerError(f"{manifest}: no column {', '.join(sorted(missing))}")
    clips = []
    for row in rows:
        if (row["split"] == "train") != (split == "train"):
            continue
        try:
            audio, rate = sf.read(folder / row["path"], dtype="float32", always_2d=True)
        except (OSError, RuntimeError) as e:
            raise MusicsteerError(f"{folder / row['path']}: unreadable audio ({e})") from e
        if rate != SAMPLE_RATE or audio.shape[1] != 1:
            raise MusicsteerError(f"{folder / row['path']}: {rate} Hz, {audio.shape[1]} channel(s); "
                                  f"the codec takes {SAMPLE_RATE} Hz mono")
        clips.append(Clip(row["path"], row["genre"], audio[:, 0].copy()))
    if not clips:
        raise MusicsteerError(f"{manifest}: no {split} clips")
    return clips


class CodecStage(Stage):
    """The EnCodec stage for `train`: model, Adam, warmup + cosine schedule, the quantizer's generator."""

    name = "codec"

    def __init__(self, train_clips: list[Clip], eval_clips: list[Clip], recipe: CodecRecipe, steps: int,
                 seed: int = 0) -> None:
        super().__init__()
        self.recipe, self.seed, self.steps = recipe, seed, steps
        self.segment = recipe.segment_frames * HOP
        self.train_clips = [c for c in train_clips if len(c.audio) >= self.segment]
        if not self.train_clips:
            raise MusicsteerError(f"no training clip is as long as a {self.segment / SAMPLE_RATE:g} s segment")
        self.eval_clips = _spread(eval_clips, recipe.eval_clips)
        torch.manual_seed(seed)
        self.model = EncodecModel(codec_config(recipe))
        self.mel = MultiScaleMel(SAMPLE_RATE)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_used = torch.zeros(recipe.codebooks, recipe.codebook_size, dtype=torch.long)  # step of last pick
        frames_per_step = recipe.batch_size * recipe.segment_frames
        self.dead_after = quantizer.dead_after_steps(recipe.codebook_size, frames_per_step, recipe.dead_uses)
        probe = [_middle(c.audio, 50 * HOP) for c in self.train_clips[: recipe.probe_clips]]
        self.probe = torch.from_numpy(np.stack(probe))[:, None]
        self.probe_mean = torch.zeros(recipe.hidden_size)  # the encoder's mean frame on the probe, last step
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=recipe.lr, betas=(recipe.beta1, recipe.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.modules, self.optimizers, self.schedulers = (
            {"codec": self.model}, {"adam": self.optimizer}, {"lr": self.scheduler})

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.recipe.warmup_steps, self.steps, self.recipe.final_lr_fraction)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.recipe), "train_clips": [c.path for c in self.train_clips]}

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "last_used": self.last_used.clone(),
                "probe_mean": self.probe_mean.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.last_used.copy_(state["last_used"])
        self.probe_mean.copy_(state["probe_mean"])

    @torch.no_grad()
    def _follow_offset(self, init: bool) -> float:
        """Move level 0's codewords by the change of the encoder's mean frame on the probe since the last call.

        The encoder's frames move together: in the first 12 steps of a 2.6 M codec their mean moved 2.1 while
        they spread 0.034 about it, leaving every k-means codeword behind but one (quantizer.py), and by step 40
        one update moved it ~2. A fixed probe measures that common motion without the batches' differences in
        content. Called after each update, so that the codebook in a checkpoint, an eval or the saved model
        matches the encoder's weights (one step behind, every held-out frame picked one code). Returns its size."""
        mean = self.model.encoder(self.probe).mean(dim=(0, 2))
        shift = torch.zeros_like(mean) if init else mean - self.probe_mean
        self.probe_mean.copy_(mean)
        quantizer.shift_codebook(self.model, shift)
        return float(shift.norm())

    def _crops(self, step: int, count: int, stream: int = 0) -> torch.Tensor:
        """(count, 1, segment) random crops of training clips for step `step` (a function of seed and step)."""
        rng = step_rng(self.seed, step, stream)
        clips = [self.train_clips[i] for i in batch_indices(len(self.train_clips), count, self.seed + stream, step)]
        starts = [int(rng.integers(0, len(c.audio) - self.segment + 1)) for c in clips]
        crops = [c.audio[s:s + self.segment] for c, s in zip(clips, starts, strict=True)]
        return torch.from_numpy(np.stack(crops))[:, None]

    def _init_codebooks(self, step: int) -> None:
        crops = math.ceil(self.recipe.init_frames / self.recipe.segment_frames)
        with torch.no_grad():
            frames = torch.cat([self.model.encoder(x) for x in self._crops(step, crops, stream=1).split(8)])
        frames = frames.permute(0, 2, 1).reshape(-1, frames.shape[1])
        per_step = self.recipe.batch_size * self.recipe.segment_frames
        quantizer.init_codebooks(self.model, frames, per_step, self.generator)
        self.last_used.fill_(step)

    def train_step(self, step: int) -> dict[str, float]:
        r = self.recipe
        audio = self._crops(step, r.batch_size)
        quantizing = step >= r.quantize_from
        if step == r.quantize_from:
            self._init_codebooks(step)
            self._follow_offset(init=True)
        stats: dict[str, float] = {}
        emb = self.model.encoder(audio)
        offset = emb.mean(dim=(0, 2)).pow(2).sum()
        commit = emb.new_zeros(())
        if quantizing:
            emb, _, commit, quantizer_stats = quantizer.quantize(
                self.model, emb, update=True, step=step, last_used=self.last_used, dead_after=self.dead_after,
                generator=self.generator, decay=r.ema_decay)
            stats.update(quantizer_stats)
        decoded = self.model.decoder(emb)[..., : audio.shape[-1]]
        mel = self.mel(audio, decoded)
        l1 = (audio - decoded).abs().mean()
        loss = r.mel_weight * mel + r.l1_weight * l1 + r.commit_weight * commit + r.offset_weight * offset
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if quantizing and r.track_offset:  # after the update: the codebook matches the weights at every step's end
            stats["offset_shift"] = self._follow_offset(init=False)
        return {"loss": loss.item(), "mel": mel.item(), "l1": l1.item(), "commit": commit.item(),
                "offset": offset.sqrt().item(), **stats, "lr": lr}

    def evaluate(self, step: int, folder: Path) -> dict[str, float]:
        """Held-out round-trips through transformers' encode/decode (the shipped path): mel distance, SI-SNR,
        each level's code-use perplexity, and eval/spectrograms-STEP.png. Before the quantizer starts, the
        round-trip is the plain autoencoder's."""
        length = self.recipe.eval_frames * HOP
        originals = torch.stack([torch.from_numpy(_middle(c.audio, length)) for c in self.eval_clips])[:, None]
        if step > self.recipe.quantize_from:
            decoded, codes = round_trip(self.model, originals)
            extra = {f"perplexity_{k}": quantizer._perplexity(codes[:, k].flatten(), self.recipe.codebook_size)
                     for k in range(codes.shape[1])}
        else:
            decoded, extra = self.model.decoder(self.model.encoder(originals))[..., :length], {}
        pairs = [(f"{c.genre} {Path(c.path).stem}", originals[i, 0], decoded[i, 0])
                 for i, c in enumerate(self.eval_clips[:4])]
        (folder / "eval").mkdir(exist_ok=True)
        plot_spectrograms(pairs, self.mel, folder / "eval" / f"spectrograms-{step:07d}.png",
                          title=f"codec after {step} steps (held-out)")
        return {"mel_distance": self.mel(originals, decoded).item(),
                "si_snr_db": si_snr(originals, decoded).mean().item(), **extra}


@torch.no_grad()
def round_trip(model: EncodecModel, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (B, 1, S) -> (decoded (B, 1, S), codes (B, K, S / 640)) through transformers' encode and decode."""
    codes = model.encode(audio, bandwidth=None).audio_codes[0]  # (B, K, frames)
    decoded = model.decode(codes[None], [None]).audio_values[..., : audio.shape[-1]]
    return decoded, codes


def _middle(audio: np.ndarray, length: int) -> np.ndarray:
    if len(audio) < length:
        return np.pad(audio, (0, length - len(audio)))
    start = (len(audio) - length) // 2
    return audio[start:start + length]


def _spread(clips: list[Clip], count: int) -> list[Clip]:
    """Up to `count` clips taking the genres in turn (the manifest's order within each genre)."""
    by_genre: dict[str, list[Clip]] = {}
    for clip in clips:
        by_genre.setdefault(clip.genre, []).append(clip)
    order = []
    for i in range(max(len(v) for v in by_genre.values())):
        order += [v[i] for v in by_genre.values() if i < len(v)]
    return order[:count]


def train_codec(corpus: str | os.PathLike, folder: str | os.PathLike, config: TrainConfig,
                recipe: CodecRecipe | None = None) -> TrainResult:
    """Train (or resume training) the codec on `corpus` in `folder`; once done, save it to folder/model."""
    recipe = recipe or CodecRecipe()
    folder = Path(folder)
    stage = CodecStage(load_clips(corpus, "train"), load_clips(corpus, "held-out"), recipe, config.steps,
                       config.seed)
    result = train(stage, folder, config)
    plot_log(folder, folder / "loss-curves.png")
    if result.stopped == "done":
        save_codec(stage.model, folder / "model", {"recipe": asdict(recipe), "steps": result.step,
                                                   "held_out": result.last_eval})
    return result


def save_codec(model: EncodecModel, folder: str | os.PathLike, facts: dict[str, Any] | None = None) -> Path:
    """save_pretrained `model` into `folder`, with toy_codec.json (recipe, steps, held-out metrics) beside it."""
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "toy_codec.json").write_text(json.dumps(facts or {}, indent=1) + "\n")
    return folder


def load_codec(folder: str | os.PathLike) -> EncodecModel:
    """EncodecModel.from_pretrained(folder), in eval mode; a folder that is not an EnCodec refused in one line."""
    check_model_folder(str(folder), Path(folder), "encodec", "EnCodec")
    with no_progress_bars():  # transformers' "Loading weights" bar would cut into the stages' own bars
        return EncodecModel.from_pretrained(folder).eval()
