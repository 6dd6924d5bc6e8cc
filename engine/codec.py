"""EnCodec at the two ends of an offline render: audio prompt -> codes, codes -> audio.

MusicGen's stereo checkpoints use a mono EnCodec on each channel and interleave the codebooks
(left, right, left, right, ...), as transformers' generate does; mono models use one channel.
Streaming decode (bounded context, lookahead) lives in its own module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .loading import LoadedModel



@torch.no_grad()
def encode_audio(lm: LoadedModel, audio: np.ndarray) -> Tensor:
    """audio (channels, samples) float at lm.sample_rate -> codes (1, K, frames), long, on lm.device."""
    codec = lm.model.audio_encoder
    wave = torch.as_tensor(audio, dtype=torch.float32, device=lm.device).to(codec.dtype)
    channels = [wave[c : c + 1][None] for c in range(lm.audio_channels)]  # each (1, 1, samples)
    codes = [codec.encode(ch, bandwidth=None).audio_codes[0] for ch in channels]  # each (1, K/C, F)
    if lm.audio_channels == 1:
        return codes[0]
    left, right = codes
    stereo = left.new_empty((1, left.shape[1] * 2, left.shape[2]))
    stereo[:, 0::2], stereo[:, 1::2] = left, right
    return stereo


@torch.no_grad()
def decode_codes(lm: LoadedModel, codes: Tensor) -> np.ndarray:
    """codes (K, frames) -> audio (channels, samples) float32 numpy at lm.sample_rate."""
    codec = lm.model.audio_encoder
    codes = codes.to(lm.device)
    groups = [codes] if lm.audio_channels == 1 else [codes[0::2], codes[1::2]]
    audio = [codec.decode(g[None, None], [None]).audio_values[0, 0] for g in groups]
    return torch.stack(audio).float().cpu().numpy()
