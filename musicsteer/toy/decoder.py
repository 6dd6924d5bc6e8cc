"""The toy decoder stage: a small T5 text encoder and MusicGen decoder trained on the corpus's codes and captions.

The model is a transformers `MusicgenForConditionalGeneration` built from configs: a 2-layer T5 text encoder
(the tiny model's offline tokenizer, engine/tiny.py), a MusicGen decoder of ~8 M parameters (4 codebooks of
2048, sinusoidal positions, delay pattern), and the trained toy codec (codec.py) as its audio encoder, so
that `save_pretrained` writes one folder that `--model FOLDER` loads as it would a hub MusicGen.

Training (teacher forcing, as MusicGen trains):
* every clip is encoded once with the codec; the codes are cached in RUN/codes/ (int16, one .npy per clip,
  written atomically, so a killed run re-encodes nothing it finished), tied to the codec by a weights digest;
* a step takes `batch_size` random crops of `segment_frames` code frames, lays them out with the decoder's
  own `build_delay_pattern_mask` (a start token, codebook k delayed by k frames, pad elsewhere), feeds the
  sequence less its last column and predicts it less its first; pad positions are ignored by the model's loss
  (the per-codebook cross-entropy of `MusicgenForCausalLM`, averaged over the codebooks);
* condition dropout: a `cond_dropout` share of rows get an all-zero text attention mask, which the model
  turns into all-zero text states: exactly the unconditional half that `generate` and the engine feed at
  inference (zero states, zero mask: engine/prompts.py encode_text), so classifier-free guidance has an
  unconditional model to push against;
* caption variants: a `short_caption` share of rows get a short caption made from the manifest's columns
  ("jazz", "calm jazz music", "rock music with guitar", ...) instead of the full one, so that a bare genre
  prompt is not a text the model never saw.
The text encoder trains with the decoder (from scratch: no pretrained T5 can be fetched here, and a frozen
random one would give the decoder features of spelling rather than meaning; it is 0.4 M parameters).

Run folder: checkpoint.pt and log.jsonl (training.py), codes/, loss-curves.png, and model/ (save_pretrained
of model and processor, toy_decoder.json beside it) once training is done.
"""

from __future__ import annotations

import copy
import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    EncodecModel,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
)

from ..engine import tiny
from ..engine.errors import MusicsteerError
from ..engine.loading import weights_digest
from .codec import MANIFEST, Clip, load_clips, load_codec
from .training import Stage, TrainConfig, TrainResult, batch_indices, plot_log, step_rng, train, warmup_cosine

PAD = tiny.PAD_TOKEN_ID  # MusicGen's pad / start id: one past the 2048 codes
CODES = "codes"


@dataclass(frozen=True)
class DecoderRecipe:
    hidden_size: int = 256  # decoder width (musicgen-small: 1024)
    layers: int = 4  # (musicgen-small: 24)
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1  # residual dropout, decoder and text encoder (MusicGen's 0.1)
    text_size: int = 128  # T5 d_model; projected to hidden_size by the model's enc_to_dec_proj
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 256
    segment_frames: int = 250  # training crop: 5 s at 50 frames/s
    batch_size: int = 8
    cond_dropout: float = 0.15  # share of rows trained unconditioned (MusicGen: 0.1-0.2 of captions dropped)
    short_caption: float = 0.3  # share of conditioned rows given a short caption from the manifest's columns
    lr: float = 5e-4  # AdamW, betas (0.9, 0.95), weight decay 0.1 (MusicGen's), warmup then cosine
    weight_decay: float = 0.1
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0
    eval_clips: int = 16  # held-out clips whose loss the eval measures (their middle segment)
    render_seconds: float = 4.0  # each eval renders this much per genre prompt to eval/renders-STEP/ (0: none)
    guidance: float = 3.0  # ... with MusicGen's sampling: classifier-free guidance 3, top-k 250


def build_model(recipe: DecoderRecipe, codec: EncodecModel, seed: int = 0) -> MusicgenForConditionalGeneration:
    """A MusicGen with the recipe's text encoder and decoder (random init, seeded) and `codec` as its audio
    encoder (its weights copied in, frozen). Generation defaults are musicgen-small's (guidance 3, top-k 250)."""
    torch.manual_seed(seed)
    text = T5Config(vocab_size=tiny.TEXT_VOCAB_SIZE, d_model=recipe.text_size,
                    d_kv=recipe.text_size // recipe.text_heads, d_ff=recipe.text_ff, num_layers=recipe.text_layers,
                    num_heads=recipe.text_heads,
                    dropout_rate=recipe.dropout, feed_forward_proj="relu", is_encoder_decoder=False)
    codebooks = len(codec.quantizer.layers)
    decoder = MusicgenDecoderConfig(
        vocab_size=codec.config.codebook_size, hidden_size=recipe.hidden_size, num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads, ffn_dim=recipe.ffn_dim, num_codebooks=codebooks, audio_channels=1,
        dropout=recipe.dropout, max_position_embeddings=2048, activation_function="gelu",
        pad_token_id=PAD, bos_token_id=PAD, decoder_start_token_id=PAD)
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec.config, decoder=decoder)
    model = MusicgenForConditionalGeneration(config)
    model.audio_encoder.load_state_dict(codec.state_dict())
    model.audio_encoder.requires_grad_(False)
    model.audio_encoder.eval()  # it only encodes (the cache) and decodes (renders); training never runs it
    tiny.musicgen_generation_defaults(model)
    return model


def trained_parameters(model: MusicgenForConditionalGeneration) -> list[torch.nn.Parameter]:
    """Text encoder, its projection and the decoder: everything but the (frozen) codec."""
    return [p for name, p in model.named_parameters() if not name.startswith("audio_encoder.")]


# ---------------------------------------------------------------- data


@dataclass
class Item:
    path: str  # as the manifest names it
    genre: str
    caption: str
    short: dict[str, str]  # mood, instrument: the parts of a short caption
    codes: np.ndarray  # (K, frames) int16


def read_captions(corpus: str | os.PathLike) -> dict[str, dict[str, str]]:
    """manifest.csv's rows by path (columns caption, genre, mood, instrument). Raises MusicsteerError on a
    manifest without a caption column (one line)."""
    manifest = Path(corpus) / MANIFEST
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "caption" not in rows[0]:
        raise MusicsteerError(f"{manifest}: no column caption (the decoder trains on captions)")
    return {row["path"]: row for row in rows}


@torch.no_grad()
def encode_clips(codec: EncodecModel, clips: list[Clip], folder: Path) -> list[np.ndarray]:
    """Each clip's codes (K, frames) int16, from folder/<path>.npy when cached, else encoded and cached
    (written to a temporary name and renamed: a kill leaves no half file). folder/codec.json names the
    codec's weights: a cache made by another codec is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = weights_digest(codec)
    stamp = folder / "codec.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("codec") != digest:
        raise MusicsteerError(f"{folder} holds codes of another codec; delete it (or use another run folder)")
    stamp.write_text(json.dumps({"codec": digest}) + "\n")
    out = []
    for clip in clips:
        path = folder / Path(clip.path).with_suffix(".npy")
        if not path.is_file():
            audio = torch.from_numpy(clip.audio)[None, None]
            codes = codec.encode(audio, bandwidth=None).audio_codes[0, 0].numpy().astype(np.int16)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.part"
            with open(tmp, "wb") as f:
                np.save(f, codes)
            os.replace(tmp, path)
        out.append(np.load(path))
    return out


def load_items(corpus: str | os.PathLike, split: str, codec: EncodecModel, run: Path) -> list[Item]:
    """The clips of `split` (codec.py's `load_clips`) with their captions and codes (cached in run/codes)."""
    clips = load_clips(corpus, split)
    rows = read_captions(corpus)
    codes = encode_clips(codec, clips, run / CODES)
    return [Item(c.path, c.genre, rows[c.path]["caption"], {k: rows[c.path].get(k, "") for k in ("mood", "instrument")},
                 k) for c, k in zip(clips, codes, strict=True)]


def short_caption(item: Item, rng: np.random.Generator) -> str:
    """A short caption from the item's columns: the genre, with or without a mood, 'music' and the lead."""
    words = [item.short["mood"].lower()] if item.short["mood"] and rng.random() < 0.5 else []
    words.append(item.genre)
    if rng.random() < 0.5:
        words.append("music")
    if item.short["instrument"] and rng.random() < 0.3:
        words += ["with", item.short["instrument"]]
    return " ".join(words)


def delayed(codes: torch.Tensor, model: MusicgenForConditionalGeneration) -> torch.Tensor:
    """codes (B, K, T) -> the delay-pattern sequence (B, K, T + K) generate builds: the start token, then
    codebook k's T codes from position k + 1, pad everywhere else (transformers' build_delay_pattern_mask)."""
    b, k, t = codes.shape
    start = torch.full((b, k, 1), PAD, dtype=torch.long)
    ids = torch.cat([start, codes.long()], dim=2).reshape(b * k, t + 1)
    _, pattern = model.decoder.build_delay_pattern_mask(ids, pad_token_id=PAD, max_length=t + k)
    return pattern.reshape(b, k, t + k)


def lm_loss(model: MusicgenForConditionalGeneration, processor: MusicgenProcessor, codes: torch.Tensor,
            captions: list[str], conditioned: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy (nats per code, mean over the codebooks) of codes (B, K, T) given the
    captions; rows where `conditioned` (B,) bool is False see the unconditional input (all-zero text mask)."""
    text = processor.tokenizer(captions, padding=True, return_tensors="pt")
    mask = text.attention_mask * conditioned[:, None].long()
    sequence = delayed(codes, model)
    b, k, length = sequence.shape
    out = model(input_ids=text.input_ids, attention_mask=mask,
                decoder_input_ids=sequence[:, :, :-1].reshape(b * k, length - 1),
                labels=sequence[:, :, 1:].transpose(1, 2))  # (B, L - 1, K); pad labels are ignored
    return out.loss


# ---------------------------------------------------------------- stage


class DecoderStage(Stage):
    """The text encoder + MusicGen decoder for `train`: model, AdamW, warmup + cosine schedule."""

    name = "decoder"

    def __init__(self, train_items: list[Item], eval_items: list[Item], codec: EncodecModel, recipe: DecoderRecipe,
                 steps: int, seed: int = 0) -> None:
        super().__init__()
        self.recipe, self.seed, self.steps = recipe, seed, steps
        self.items = [i for i in train_items if i.codes.shape[1] >= recipe.segment_frames]
        if not self.items:
            raise MusicsteerError(f"no training clip is as long as a {recipe.segment_frames}-frame segment")
        self.eval_items = eval_items[: recipe.eval_clips]
        self.codec_digest = weights_digest(codec)  # the codes' meaning: a checkpoint under another codec is refused
        self.model = build_model(recipe, codec, seed)
        self.processor = tiny.build_processor()
        self.optimizer = torch.optim.AdamW(trained_parameters(self.model), lr=recipe.lr, betas=(0.9, 0.95),
                                           weight_decay=recipe.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # the codec is frozen and fixed: checkpoint the trained parts only
        self.trained = torch.nn.ModuleDict({"text_encoder": self.model.text_encoder, "decoder": self.model.decoder,
                                            "enc_to_dec_proj": self.model.enc_to_dec_proj})
        self.modules, self.optimizers, self.schedulers = (
            {"musicgen": self.trained}, {"adamw": self.optimizer}, {"lr": self.scheduler})

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.recipe.warmup_steps, self.steps, self.recipe.final_lr_fraction)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.recipe), "codec": self.codec_digest, "train_clips": [i.path for i in self.items]}

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Batch `step` (a function of seed and step): codes (B, K, segment), captions, conditioned (B,) bool."""
        r = self.recipe
        rng = step_rng(self.seed, step)
        items = [self.items[i] for i in batch_indices(len(self.items), r.batch_size, self.seed, step)]
        crops, captions, conditioned = [], [], []
        for item in items:
            start = int(rng.integers(0, item.codes.shape[1] - r.segment_frames + 1))
            crops.append(item.codes[:, start:start + r.segment_frames])
            conditioned.append(bool(rng.random() >= r.cond_dropout))
            captions.append(short_caption(item, rng) if rng.random() < r.short_caption else item.caption)
        return torch.from_numpy(np.stack(crops)), captions, torch.tensor(conditioned)

    def train_step(self, step: int) -> dict[str, float]:
        codes, captions, conditioned = self.batch(step)
        loss = lm_loss(self.model, self.processor, codes, captions, conditioned)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trained_parameters(self.model), self.recipe.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), "grad_norm": float(norm), "lr": lr}

    def evaluate(self, step: int, folder: Path) -> dict[str, float]:
        """Held-out teacher-forced loss with the full captions and unconditioned: their gap (nats per code) is
        what the captions tell the model about the music."""
        n = self.recipe.segment_frames
        middles = [i.codes[:, (i.codes.shape[1] - n) // 2:][:, :n] for i in self.eval_items if i.codes.shape[1] >= n]
        if not middles:
            return {}
        codes = torch.from_numpy(np.stack(middles))
        captions = [i.caption for i in self.eval_items if i.codes.shape[1] >= n]
        ones = torch.ones(len(middles), dtype=torch.bool)
        cond = lm_loss(self.model, self.processor, codes, captions, ones).item()
        uncond = lm_loss(self.model, self.processor, codes, captions, ~ones).item()
        if self.recipe.render_seconds > 0:
            self.render(sorted({i.genre for i in self.eval_items}), folder / "eval" / f"renders-{step:07d}")
        return {"held_out_loss": cond, "held_out_uncond_loss": uncond, "caption_gain": uncond - cond}

    def render(self, prompts: list[str], folder: Path) -> Path:
        """One render of `render_seconds` per prompt through transformers' `generate` (sampled, guided as the
        recipe says; the eval's forked RNG keeps training unchanged), written as folder/<prompt>.wav."""
        import soundfile as sf

        frames = max(1, round(self.recipe.render_seconds * self.model.config.audio_encoder.frame_rate))
        text = self.processor(text=prompts, padding=True, return_tensors="pt")
        with tiny.no_progress_bars():
            # the delay pattern takes K - 1 steps beyond the frames (codebook k lags k steps behind the first)
            audio = self.model.generate(**text, max_new_tokens=frames + self.model.decoder.num_codebooks - 1,
                                        do_sample=True, top_k=250,
                                        guidance_scale=self.recipe.guidance)
        folder.mkdir(parents=True, exist_ok=True)
        rate = self.model.config.audio_encoder.sampling_rate
        for prompt, clip in zip(prompts, audio[:, 0].float().numpy(), strict=True):
            sf.write(folder / f"{prompt}.wav", clip, rate)
        return folder


def train_decoder(corpus: str | os.PathLike, folder: str | os.PathLike, config: TrainConfig,
                  recipe: DecoderRecipe | None = None, codec_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train (or resume) the decoder on `corpus` in `folder` with the codec saved in `codec_dir` (codec.py's
    RUN/model); once done, save the whole MusicGen (and its processor) to folder/model."""
    if codec_dir is None:
        raise MusicsteerError("the decoder stage needs the trained codec's folder (codec_dir)")
    recipe = recipe or DecoderRecipe()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    codec = load_codec(codec_dir)
    train_items = load_items(corpus, "train", codec, folder)
    eval_items = load_items(corpus, "held-out", codec, folder)
    stage = DecoderStage(train_items, eval_items, codec, recipe, config.steps, config.seed)
    result = train(stage, folder, config)
    plot_log(folder, folder / "loss-curves.png")
    if result.stopped == "done":
        save_decoder(stage.model, stage.processor, folder / "model",
                     {"recipe": asdict(recipe), "steps": result.step, "held_out": result.last_eval,
                      "codec": str(codec_dir)})
    return result


def save_decoder(model: MusicgenForConditionalGeneration, processor: MusicgenProcessor, folder: str | os.PathLike,
                 facts: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """save_pretrained a copy of model in `dtype`, and processor, into `folder` (what `--model FOLDER` loads, in
    the dtype it is asked for), toy_decoder.json beside. float16 by default: the shipped model, codec included,
    must fit 30 MB, and in float32 the default recipe's is ~50 MB (8.7 M + 3.7 M parameters and buffers)."""
    folder = Path(folder)
    with tiny.no_progress_bars():
        copy.deepcopy(model).to(dtype).eval().save_pretrained(folder)
        processor.save_pretrained(folder)
    (folder / "toy_decoder.json").write_text(json.dumps(facts or {}, indent=1) + "\n")
    return folder
