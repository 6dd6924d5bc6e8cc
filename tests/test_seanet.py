"""engine/seanet.py: the SEANet decoder layers as plain functional calls give the modules' output bit for bit.

Checked on the 32 kHz layout MusicGen uses (non-causal, reflect padding, weight norm) and on the
variants transformers' EncodecConfig allows (causal convs with a right-trim ratio, a conv shortcut,
dilated residual blocks, time group norm, which is kept as the module), with inputs long and shorter
than a conv's padding (transformers' small-input reflect path).
"""

from __future__ import annotations

import pytest
import torch
from transformers import EncodecConfig, EncodecModel

from musicsteer.engine.seanet import compile_layers

BASE = dict(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], codebook_size=64,
            num_filters=8, hidden_size=16, num_lstm_layers=1, codebook_dim=16, audio_channels=1)


@pytest.mark.parametrize("variant", [
    {},  # MusicGen's 32 kHz layout at small widths
    {"use_causal_conv": True, "trim_right_ratio": 0.5},
    {"use_conv_shortcut": True, "num_residual_layers": 2, "dilation_growth_rate": 3},
    {"norm_type": "time_group_norm", "use_causal_conv": True},
    {"pad_mode": "constant"},
    {"audio_channels": 2, "upsampling_ratios": [3, 5, 7], "kernel_size": 6, "compress": 4},
    {"dtype": torch.bfloat16},
    {"dtype": torch.float16},
], ids=["musicgen", "causal", "shortcut-dilated", "group-norm", "zero-pad", "stereo-odd", "bfloat16", "float16"])
def test_compiled_layers_equal_the_modules_bit_for_bit(variant: dict) -> None:
    torch.manual_seed(0)
    config = {**BASE, **variant}
    dtype = config.pop("dtype", torch.float32)
    decoder = EncodecModel(EncodecConfig(**config)).decoder.eval().to(dtype)
    layers = list(decoder.layers)
    for p in decoder.parameters():  # weights, biases and norm gains all away from their initial values
        torch.nn.init.normal_(p, std=0.3)
    pre, post, whole = compile_layers(layers[:1]), compile_layers(layers[2:]), compile_layers(layers)
    with torch.inference_mode():
        for frames in (1, 2, 9):  # 1 and 2 are shorter than the first conv's padding of 3
            x = torch.randn(2, BASE["hidden_size"], frames, dtype=dtype)
            assert torch.equal(pre(x), layers[0](x))
            features = torch.randn(2, layers[0].conv.out_channels, frames, dtype=dtype)
            expected = features
            for layer in layers[2:]:
                expected = layer(expected)
            assert torch.equal(post(features), expected)
            assert torch.equal(whole(x), decoder(x))  # with the LSTM kept as its module


def test_later_changes_to_the_modules_are_not_seen() -> None:
    """The compiled stack holds copies: a codec whose weights are swapped later is not decoded half-old."""
    torch.manual_seed(1)
    layers = list(EncodecModel(EncodecConfig(**BASE)).decoder.eval().layers)
    run = compile_layers(layers[2:])
    x = torch.randn(1, layers[0].conv.out_channels, 4)
    with torch.inference_mode():
        before = run(x)
        with torch.no_grad():
            for p in layers[-1].parameters():
                p.add_(1.0)
        assert torch.equal(run(x), before)


def test_a_layer_that_computes_otherwise_than_its_kind_runs_as_its_module() -> None:
    """Layers are recognised by class name; one whose forward is not what this module knows (a later
    transformers) is found by the check at compile time and run as the module."""
    torch.manual_seed(2)
    layers = list(EncodecModel(EncodecConfig(**BASE)).decoder.eval().layers)
    last = layers[-1]
    plain_forward = last.forward
    last.forward = lambda x: plain_forward(x) * 0.5  # what a changed EncodecConv1d.forward might do
    with pytest.warns(UserWarning, match="runs as its module"):  # said: a slower decoder should not be silent
        run = compile_layers(layers[2:])
    x = torch.randn(1, layers[0].conv.out_channels, 6)
    with torch.inference_mode():
        expected = x
        for layer in layers[2:]:
            expected = layer(expected)
        assert torch.equal(run(x), expected)
