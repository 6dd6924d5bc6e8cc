"""A tiny random-weight MusicGen that builds offline, for tests and smoke runs.

The tiny model makes noise, not music, but it has the real MusicGen structure (T5 text encoder,
EnCodec 32 kHz at 50 frames/s with 4 codebooks, the MusicGen decoder) so every code path of the
engine runs on it. Three repairs make it useful for probes and streaming tests (docs/design.md §6):

* A fresh EnCodec has all-zero codebooks, so every frame of any audio gets the same code. We seed
  each residual level's codebook by k-means over encoder frames (level 0) and residuals (level k)
  of varied synthetic audio, as EnCodec's own k-means init does.
* A random EnCodec decoder barely depends on its input: its output is a bias-driven DC level.
  `make_decoder_sensitive` scales the first decoder conv so the quantized embeddings dominate,
  and removes the DC offset from the last conv, so different codes give clearly different audio.
* A random MusicGen decoder embeds each of the 2048 codes as an unrelated random vector, so its
  activations hear the audio only through which exact codes came out. With seeded codebooks that
  fine (nearly every frame of a 2 s clip gets a code of its own), a last-bit change in the float
  arithmetic (another CPU's kernels: the encoder convs, the k-means distances) flips near-tie
  codes and moves a probe's held-out accuracy on three clip kinds anywhere between 0.53 and 0.93.
  `embed_codes_by_codeword` makes each code's embedding a smooth function of its codeword, as a
  trained model's embeddings are of what a code sounds like: codes that sound alike embed alike,
  so a flipped near-tie moves the activations by little, and the kinds stay apart (0.87-1.0).
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
import platformdirs
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
from .synthetic import CLIP_KINDS, synthetic_clip

# Bump whenever anything below changes the saved model: the cache folder name includes it, so an
# old cached tiny model is never mistaken for the current recipe.
RECIPE_VERSION = 3

SAMPLE_RATE = 32000
TEXT_VOCAB_SIZE = 200
PAD_TOKEN_ID = 2048  # MusicGen's pad/bos/decoder-start id sits one past the 2048 codes
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
        embed_codes_by_codeword(model, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return model, build_processor()


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
def embed_codes_by_codeword(model: MusicgenForConditionalGeneration, bandwidth: float = 0.5, seed: int = 0) -> None:
    """Replace the decoder's random code embeddings by random Fourier features of the codewords.

    Row c of decoder codebook k (EnCodec level k // audio_channels: stereo interleaves left and
    right) becomes cos(u_c W + b), where u_c is the unit direction of codeword c about its
    codebook's mean and W ~ N(0, 1/bandwidth^2), b ~ U(0, 2 pi) are fixed random draws: a smooth
    function of the codeword (nearby codewords get nearly equal rows; the direction rather than
    the length, which mostly follows the frame's loudness). Each table is centred and scaled to
    the standard deviation of the random table it replaces, times its level's share of the signal
    (the RMS of its codewords relative to level 0), so the residual levels, whose codes say little
    about the sound, do not drown the first. The pad row (id 2048) keeps its random init.

    Measured on tests/test_probes.py's 3-kind set (held-out accuracy of the mse probe over 20
    split seeds, best layer). Random embeddings: 0.75-0.86 on average and down to 0.53, the
    numbers moving with the CPU kernels' float rounding alone (ATEN_CPU_CAPABILITY, MKL_CBWR).
    These: 0.97-0.98 on average and never below 0.87 under the same kernel choices; over build
    seeds 0-4, 0.90-0.99 on average. Bandwidth 0.35 and 0.7 did no better.
    """
    books = [layer.codebook.embed.double() for layer in model.audio_encoder.quantizer.layers]
    embeds = model.decoder.model.decoder.embed_tokens
    channels = int(getattr(model.config.decoder, "audio_channels", 1) or 1)
    gen = torch.Generator().manual_seed(seed)
    level_rms = []
    for book in books:
        centred = book - book.mean(0)
        level_rms.append(centred.pow(2).sum(1).mean().sqrt().clamp(min=1e-30))
    for k, embed in enumerate(embeds):
        level = k // channels
        book = books[level]
        centred = book - book.mean(0)
        direction = centred / centred.norm(dim=1, keepdim=True).clamp(min=1e-30)
        rows, width = len(book), embed.weight.shape[1]
        w = torch.randn(book.shape[1], width, generator=gen, dtype=torch.float64) / bandwidth
        b = torch.rand(width, generator=gen, dtype=torch.float64) * (2 * math.pi)
        features = torch.cos(direction @ w + b)
        features = (features - features.mean(0)) / features.std().clamp(min=1e-30)
        scale = embed.weight[:rows].double().std() * level_rms[level] / level_rms[0]
        embed.weight[:rows] = (features * scale).to(embed.weight.dtype)


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
    """$MUSICSTEER_CACHE, else the platform's user cache folder for musicsteer (platformdirs: on Linux
    $XDG_CACHE_HOME/musicsteer or ~/.cache/musicsteer, on macOS ~/Library/Caches/musicsteer, on
    Windows under %LOCALAPPDATA%)."""
    if os.environ.get("MUSICSTEER_CACHE"):
        return Path(os.environ["MUSICSTEER_CACHE"]).expanduser()
    return Path(platformdirs.user_cache_dir("musicsteer"))


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
