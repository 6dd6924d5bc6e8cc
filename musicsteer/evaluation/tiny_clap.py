"""A tiny random-weight CLAP that builds offline (`--clap tiny`), for tests and smoke runs.

Real CLAP structure (RoBERTa text tower, HTSAT audio tower, ClapFeatureExtractor at 48 kHz with
64 mel bins and a 10 s window, as the laion checkpoints use) at toy sizes, so the scoring path
runs end to end without the hub. Its scores are meaningless. The tokenizer is byte-level BPE
with no merges: its vocabulary is the 256 byte symbols plus RoBERTa's specials, built in memory,
so nothing is downloaded.
Like engine/tiny.py, it is saved once into the user cache and loaded back through the same
`from_pretrained` path a hub model takes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    RobertaTokenizer,
)

from musicsteer.engine.files import build_folder_once
from musicsteer.engine.tiny import cache_dir, no_progress_bars

# Bump when the recipe changes: the cache folder name includes it.
RECIPE_VERSION = 1
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4


def build_tokenizer() -> RobertaTokenizer:
    vocab = {token: i for i, token in enumerate(_SPECIALS + sorted(ByteLevel.alphabet()))}
    return RobertaTokenizer(vocab=vocab, merges=[])


def build_tiny_clap(seed: int = 0) -> tuple[ClapModel, ClapProcessor]:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)  # same recipe + seed -> same weights
    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=258, projection_dim=16)
    # HTSAT keeps its geometry (64 mel bins folded into a 256x256 "image") at a width of 16-32.
    audio = ClapAudioConfig(depths=[1, 1], num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32,
                            projection_dim=16, window_size=8, spec_size=256, num_mel_bins=64, enable_fusion=False)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    model = ClapModel(config).eval()
    features = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=480, max_length_s=10,
                                    fft_window_size=1024, frequency_min=50, frequency_max=14000,
                                    truncation="rand_trunc", padding="repeatpad")
    return model, ClapProcessor(feature_extractor=features, tokenizer=tokenizer)


def ensure_tiny_clap() -> Path:
    """The cached tiny CLAP folder, built on first use (into a temporary sibling, then renamed)."""
    def build(tmp: Path) -> None:
        model, processor = build_tiny_clap()
        with no_progress_bars():
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)

    def complete(path: Path) -> bool:
        return (path / "config.json").is_file() and (path / "processor_config.json").is_file()

    return build_folder_once(cache_dir() / f"clap-tiny-v{RECIPE_VERSION}", build, complete, "the tiny CLAP")
