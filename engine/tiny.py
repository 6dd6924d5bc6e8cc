"""A tiny random-weight MusicGen that builds offline, for tests and smoke runs.

The tiny model makes noise, not music, but it has the real MusicGen structure (T5 text encoder,
EnCodec 32 kHz at 50 frames/s with 4 codebooks, the MusicGen decoder) so every code path of the
engine runs on it. Two repairs make it useful for probes and streaming tests (DESIGN.md §4):

* A fresh EnCodec has all-zero codebooks, so every frame of any audio gets the same code. We seed
  each residual level's codebook by k-means over encoder frames (level 0) and residuals (level k)
  of varied synthetic audio, as EnCodec's own k-means init does.
* A random EnCodec decoder barely depends on its input: its output is a bias-driven DC level.
  `make_decoder_sensitive` scales the first decoder conv so the quantized embeddings dominate,
  and removes the DC offset from the last conv, so different codes give clearly different audio.
The cached copy is loaded through the same `from_pretrained` path as a hub model (`load_model`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
    T5Tokenizer,
)
from transformers.utils import logging as hf_logging

from .errors import MusicsteerError
from .files import build_folder_once

# Bump whenever anything below changes the saved model: the cache folder name includes it, so an
# old cached tiny model is never mistaken for the current recipe.
RECIPE_VERSION = 2

SAMPLE_RATE = 32000
TEXT_VOCAB_SIZE = 200
PAD_TOKEN_ID = 2048  # MusicGen's pad/bos/decoder-start id sits one past the 2048 codes
CLIP_KINDS = ("tone", "chord", "drums", "noise", "clicks")
VARIANTS = {"tiny": False, "tiny-stereo": True}

log = logging.getLogger(__name__)

# Common prompt words, so that prompts tokenize into words rather than letters or <unk>.
_WORDS = [
    "a", "an", "the", "with", "and", "of", "in", "on", "for", "to", "by", "from", "at", "is", "music",
    "song", "track", "sound", "style", "solo", "band", "melody", "harmony", "rhythm", "chords", "loop",
    "background", "lead", "classical", "jazz", "rock", "pop", "blues", "funk", "soul", "disco", "house",
    "techno", "trance", "ambient", "metal", "punk", "reggae", "hip", "hop", "rap", "country", "folk",
    "latin", "electronic", "lofi", "orchestral", "cinematic", "dubstep", "gospel", "opera", "swing",
    "indie", "piano", "guitar", "strings", "violin", "cello", "drum", "drums", "bass", "synth", "organ",
    "flute", "trumpet", "sax", "choir", "vocals", "voice", "harp", "bells", "pad", "beat", "beats",
    "percussion", "horns", "brass", "acoustic", "electric", "slow", "fast", "upbeat", "calm", "happy",
    "sad", "dark", "bright", "soft", "loud", "heavy", "light", "warm", "dreamy", "epic", "gentle",
    "energetic", "mellow", "groovy", "melodic", "tempo", "bpm", "chill", "relaxing", "driving", "deep",
    "minor", "major", "key", "vintage", "modern", "old", "new", "guitars", "keys", "noise", "tone", "clicks",
]
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.-'!?:&")


class _DropSpecialIdWarning(logging.Filter):
    """Drop transformers 5's 'pad_token_id 2048 must be within the vocabulary' config warnings:
    MusicGen's special id is one past the codebook on purpose (its embeddings have 2049 rows)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "integer within the vocabulary" not in record.getMessage()


for _name in ("transformers.configuration_utils", "transformers.models.musicgen.configuration_musicgen"):
    logging.getLogger(_name).addFilter(_DropSpecialIdWarning())


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Hide transformers' 'Loading weights' / 'Writing model shards' bars for the tiny model."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def build_tokenizer() -> T5Tokenizer:
    """A small offline Unigram T5 tokenizer (pad 0, eos 1, unk 2): whole words score higher than
    letters, so common words stay one token and anything else spells out. (A Lowercase normalizer
    would not survive save/load: T5Tokenizer rebuilds its pipeline from the vocab.)"""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    vocab += [(f"▁{w}", -6.0) for w in dict.fromkeys(_WORDS)]
    vocab += [(c, -12.0) for c in _CHARS]
    extra_ids = 4
    if len(vocab) + extra_ids > TEXT_VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {len(vocab) + extra_ids} pieces > {TEXT_VOCAB_SIZE}")
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids)


def build_processor() -> MusicgenProcessor:
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_side="left")
    return MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=build_tokenizer())


def musicgen_generation_defaults(model: MusicgenForConditionalGeneration) -> None:
    """Match facebook/musicgen-small's generation_config.json."""
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = PAD_TOKEN_ID
    gc.guidance_scale, gc.do_sample, gc.top_k, gc.max_length = 3.0, True, 250, 1500


def build_tiny_model(
    *, stereo: bool = False, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, ffn_dim: int = 128,
    seed: int = 0,
) -> tuple[MusicgenForConditionalGeneration, MusicgenProcessor]:
    """Build the tiny MusicGen (seeded codebooks, code-sensitive decoder) and its processor."""
    torch.manual_seed(seed)  # same recipe + seed -> same weights
    text = T5Config(
        vocab_size=TEXT_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="relu", is_encoder_decoder=False,
    )
    audio = EncodecConfig(
        sampling_rate=SAMPLE_RATE, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
        codebook_size=2048, num_filters=4, hidden_size=16, codebook_dim=16, num_lstm_layers=1,
        use_causal_conv=False, use_conv_shortcut=False, audio_channels=1,
    )
    # Stereo MusicGen interleaves left/right codebooks (8 rows) but encodes each channel with the
    # same mono EnCodec, so only the decoder config changes.
    decoder = MusicgenDecoderConfig(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        ffn_dim=ffn_dim, num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
        pad_token_id=PAD_TOKEN_ID, bos_token_id=PAD_TOKEN_ID, decoder_start_token_id=PAD_TOKEN_ID,
    )
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    model = MusicgenForConditionalGeneration(config).eval()
    musicgen_generation_defaults(model)
    # The tensors here are small: one thread is as fast, and on a busy CPU two spinning OpenMP
    # threads made this build 3x slower (measured 26 s vs 8 s under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_codebooks(model.audio_encoder, seed=seed)
        make_decoder_sensitive(model)
    finally:
        torch.set_num_threads(threads)
    return model, build_processor()


def synthetic_clip(kind: str, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Deterministic float32 mono test audio of one kind.

    tone/chord: sustained harmonic notes/chords that change every 0.4-1.5 s; drums: kick, snare and
    hat hits on a beat (80-160 bpm); noise: coloured noise bursts at a slower tempo (40-75 bpm);
    clicks: impulse trains. Pitch, tempo and level vary with the seed.
    """
    if kind not in CLIP_KINDS:
        raise MusicsteerError(f"unknown clip kind {kind!r}; expected one of {', '.join(CLIP_KINDS)}")
    rng = np.random.default_rng([seed, CLIP_KINDS.index(kind)])
    n = max(1, int(round(seconds * sample_rate)))
    if kind in ("tone", "chord"):
        x = _harmonic(rng, n, sample_rate, chord=kind == "chord")
    elif kind == "drums":
        x = _drums(rng, n, sample_rate)
    elif kind == "noise":
        x = _noise_bursts(rng, n, sample_rate)
    else:
        x = _clicks(rng, n, sample_rate)
    peak = float(np.max(np.abs(x))) or 1.0
    level = 10 ** (rng.uniform(-20.0, -3.0) / 20)  # varied loudness, never clipping
    return (x * (level / peak)).astype(np.float32)


def _harmonic(rng: np.random.Generator, n: int, sr: int, chord: bool) -> np.ndarray:
    shapes = [[0, 4, 7], [0, 3, 7], [0, 4, 7, 11], [0, 3, 7, 10], [0, 5, 7]] if chord else [[0]]
    x, start = np.zeros(n), 0
    while start < n:
        length = min(n - start, int(sr * rng.uniform(0.4, 1.5)))
        t = np.arange(length) / sr
        root = rng.uniform(45, 76)
        rolloff = rng.uniform(0.8, 2.0)  # timbre: how fast the harmonics fall off
        seg = np.zeros(length)
        for interval in shapes[rng.integers(len(shapes))]:
            f0 = 440.0 * 2 ** ((root + interval - 69) / 12)
            for h in range(1, 9):
                if f0 * h < sr / 2:
                    seg += np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h**rolloff
        env = np.minimum(1.0, np.minimum(t / 0.02, (length / sr - t) / 0.05).clip(0))
        x[start : start + length] = seg * env
        start += length
    return x


def _decay_hit(rng: np.random.Generator, length: int, sr: int, kind: str) -> np.ndarray:
    t = np.arange(length) / sr
    if kind == "kick":  # pitch sweep 150 -> 45 Hz
        freq = 45 + 105 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.15)
    noise = rng.standard_normal(length)
    if kind == "hat":  # high-passed noise, very short
        return np.diff(noise, prepend=0.0) * np.exp(-t / 0.02) * 0.4
    return (noise * 0.7 + np.sin(2 * np.pi * 180 * t)) * np.exp(-t / 0.12)  # snare


def _drums(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    beat = 60.0 / rng.uniform(80, 160)
    x = np.zeros(n)
    for i in range(int(n / sr / (beat / 2)) + 1):  # eighth notes: hat on the offbeats
        pos = int(i * beat / 2 * sr)
        kind = "hat" if i % 2 else ("kick" if i % 4 == 0 else "snare")
        hit = _decay_hit(rng, min(n - pos, int(0.4 * sr)), sr, kind) * rng.uniform(0.5, 1.0)
        x[pos : pos + len(hit)] += hit
    return x


def _noise_bursts(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    period = 60.0 / rng.uniform(40, 75)
    x = 0.02 * rng.standard_normal(n)
    for i in range(int(n / sr / period) + 1):
        pos = int(i * period * sr)
        length = min(n - pos, int(sr * rng.uniform(0.1, 0.5)))
        if length <= 0:
            break
        # one-pole low-pass with a random cutoff gives noise of varied colour (short: a loop is fine)
        a, burst = rng.uniform(0.0, 0.98), rng.standard_normal(length)
        for k in range(1, length):
            burst[k] += a * burst[k - 1]
        t = np.arange(length) / sr
        burst *= np.minimum(1.0, t / 0.01) * np.exp(-t / rng.uniform(0.05, 0.3))
        x[pos : pos + length] += burst / (np.std(burst) + 1e-9)
    return x


def _clicks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    x = np.zeros(n)
    period = int(sr / rng.uniform(2, 20))
    for pos in range(0, n, period):
        x[pos : pos + int(rng.integers(1, 16))] += rng.uniform(-1, 1)  # clicks of varied width
    return x


def _seed_audio(seed: int, per_kind: int = 8, seconds: float = 3.0) -> torch.Tensor:
    """(B, 1, samples) of every clip kind plus pairwise mixtures, for codebook k-means."""
    clips = [synthetic_clip(k, seconds, SAMPLE_RATE, seed * 1000 + i) for i in range(per_kind) for k in CLIP_KINDS]
    mixes = [clips[i] + clips[(i * 7 + 3) % len(clips)] for i in range(0, len(clips), 2)]
    return torch.from_numpy(np.stack(clips + mixes))[:, None, :]


def _nearest(frames: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    # argmin of |f - c|^2 = argmin of |c|^2 - 2 f.c; one fused addmm keeps k-means fast
    return torch.addmm(centroids.pow(2).sum(1)[None], frames, centroids.t(), alpha=-2.0).argmin(dim=1)


def _kmeans(frames: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    centroids = frames[torch.randperm(len(frames), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = _nearest(frames, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, frames)
        counts = torch.bincount(assign, minlength=k).to(frames.dtype)[:, None]
        # empty clusters keep their previous centroid (a real data frame)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


@torch.no_grad()
def seed_codebooks(audio_encoder: torch.nn.Module, seed: int = 0, iters: int = 4) -> None:
    """Fill every residual level's codebook with k-means centroids of real encoder frames."""
    gen = torch.Generator().manual_seed(seed)
    # small batches: one huge batch thrashes memory and is several times slower on CPU
    frames = torch.cat([audio_encoder.encoder(chunk) for chunk in _seed_audio(seed).split(8)])
    residual = frames.permute(0, 2, 1).reshape(-1, frames.shape[1])  # (B*T, D)
    for layer in audio_encoder.quantizer.layers:
        book = layer.codebook
        if len(residual) < book.codebook_size:
            raise RuntimeError("not enough seed frames for the codebook size")
        centroids = _kmeans(residual, book.codebook_size, iters, gen)
        book.embed.copy_(centroids)
        book.embed_avg.copy_(centroids)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)  # tell EnCodec's own init logic these codebooks are set
        residual = residual - centroids[_nearest(residual, centroids)]


def _random_codes(audio_encoder: torch.nn.Module, frames: int, seed: int) -> torch.Tensor:
    q = audio_encoder.quantizer
    n_q = q.get_num_quantizers_for_bandwidth(audio_encoder.config.target_bandwidths[0])
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, q.codebook_size, (1, 1, n_q, frames), generator=gen)


def _decode(audio_encoder: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    return audio_encoder.decode(codes.to(audio_encoder.device), [None]).audio_values.float()


def _decoder_convs(audio_encoder: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    convs = [m for m in audio_encoder.decoder.layers if hasattr(m, "conv")]
    return convs[0].conv, convs[-1].conv


@torch.no_grad()
def make_decoder_sensitive(model: MusicgenForConditionalGeneration, target_rms: float = 0.1) -> None:
    """Make the random EnCodec decoder's output depend on its codes, at a sane audio level.

    Measured on the seeded tiny model: the decoder's input (a sum of codebook vectors) has a
    per-channel mean ~40x its spread across codes (0.1 vs 0.0025), and the random biases add a DC level and a
    frame-rate buzz, so two random code sequences decoded to audio ~30-80 dB apart. We (1) fold a
    per-channel standardisation of the decoder input into the first conv, (2) zero every other
    decoder bias (so the output is a function of the codes' deviation only), and (3) rescale the
    last conv to `target_rms`, zero mean. Weight-normed convs accept `conv.weight = w`.
    """
    ae = model.audio_encoder
    books = [layer.codebook.embed for layer in ae.quantizer.layers]
    mean = sum(book.mean(0) for book in books)  # input statistics for uniformly random codes
    std = sum(book.var(0) for book in books).sqrt().clamp(min=1e-6)
    first, last = _decoder_convs(ae)
    for name, param in ae.decoder.named_parameters():
        if "bias" in name:
            param.zero_()
    first.weight = first.weight / std[None, :, None]
    first.bias.copy_(-(first.weight * mean[None, :, None]).sum(dim=(1, 2)))
    codes = torch.cat([_random_codes(ae, 25, seed) for seed in range(2)], dim=1)
    out = _decode(ae, codes)
    gain = target_rms / max(out.std().item(), 1e-9)
    last.weight = last.weight * gain
    last.bias.copy_(-gain * out.mean())


@torch.no_grad()
def decoder_sensitivity_db(model: MusicgenForConditionalGeneration, frames: int = 50, seed: int = 1234) -> float:
    """Power of the difference between decodes of two random code sequences, in dB relative to
    their mean power: about +3 dB for independent signals, -60 dB for a decoder that ignores codes."""
    ae = model.audio_encoder
    a = _decode(ae, _random_codes(ae, frames, seed))
    b = _decode(ae, _random_codes(ae, frames, seed + 1))
    ref = 0.5 * (a.pow(2).mean() + b.pow(2).mean())
    return 10 * math.log10((a - b).pow(2).mean().item() / max(ref.item(), 1e-30))


def cache_dir() -> Path:
    """$MUSICSTEER_CACHE, else $XDG_CACHE_HOME/musicsteer, else ~/.cache/musicsteer."""
    if os.environ.get("MUSICSTEER_CACHE"):
        return Path(os.environ["MUSICSTEER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "musicsteer"


def save_tiny(path: str | os.PathLike, **build_kwargs) -> Path:
    """Build a tiny model and `save_pretrained` it and its processor into `path`."""
    path = Path(path)
    model, processor = build_tiny_model(**build_kwargs)
    with no_progress_bars():
        model.save_pretrained(path)
        processor.save_pretrained(path)
    recipe = {"recipe_version": RECIPE_VERSION, "build_kwargs": build_kwargs}
    (path / "musicsteer_tiny.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return path


def ensure_tiny(variant: str = "tiny") -> Path:
    """The cached folder of a tiny variant ("tiny" | "tiny-stereo"), built on first use.

    Built into a temporary sibling folder and renamed into place, so a reader never sees a half
    written model and two processes building at once both end up with one complete folder.
    """
    if variant not in VARIANTS:
        raise MusicsteerError(f"unknown tiny variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    final = cache_dir() / f"{variant}-v{RECIPE_VERSION}"

    def build(tmp: Path) -> None:
        log.info("building the %s model into %s", variant, final)
        save_tiny(tmp, stereo=VARIANTS[variant])

    return build_folder_once(final, build, lambda path: (path / "musicsteer_tiny.json").is_file(), "the tiny model")
