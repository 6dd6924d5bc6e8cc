"""EnCodec's SEANet decoder layers as plain `torch.nn.functional` calls: the same arithmetic, less overhead.

The streaming decoder (engine/streaming_decoder.py) runs the decoder's layers on a few frames at a
time, 50 times a second for `--buffer auto`. At that size the work is overhead: transformers'
EncodecConv1d computes its padding with tensor arithmetic on every call (a dozen small tensor ops
per conv), weight norm recomputes g·v/‖v‖ per call, and each nn.Module call costs its hooks. Measured
on the tiny model (1 thread, 2-core CPU): 5.0 → 1.9 ms per 1-frame chunk of the streaming decoder
(a second measure, on a busier machine: 2.6–3.6 → 1.4 ms). Every
millisecond a chunk takes is a millisecond more of lead the ring must hold over the DAC, i.e. of
knob → heard (engine/lead.py).

`compile_layers` turns the layers into closures over plain tensors and integer paddings, computed
once. They call the ops transformers' modules call, in the same order with the same arguments, so
the output is bit-identical (tests/test_seanet.py checks it on every layer kind). A layer
of a kind not known here (a future norm type) is kept as the module itself: still exact, just not faster.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.nn.utils import parametrize

Layer = Callable[[Tensor], Tensor]


def compile_layers(modules: Sequence[torch.nn.Module]) -> Layer:
    """The layers `modules` (EncodecConv1d, EncodecConvTranspose1d, EncodecResnetBlock, nn.ELU; others,
    such as EncodecLSTM, run as their modules), applied in order: (B, C, T) float -> (B, C', T'), as the
    modules would. Weights are copied (weight norm folded in), so later changes to the modules are not
    seen. Each compiled layer is checked against its module once, here, on random inputs of 1 and 4
    steps, and any that differs in a bit is run as the module instead: the layers are recognised by
    class name, and a later transformers may change what one computes."""
    frozen = list(_without_weight_norm(torch.nn.Sequential(*modules)))
    return _chain(_checked([_compile(m) for m in frozen], list(modules), frozen))


@torch.inference_mode()
def _checked(steps: list[Layer], originals: list[torch.nn.Module], frozen: list[torch.nn.Module]) -> list[Layer]:
    """`steps`, with any whose output differs from its original module's on a probe swapped for the module."""
    kinds = (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.LSTM)
    first = next((sub for module in frozen for sub in module.modules() if isinstance(sub, kinds)), None)
    if first is None:  # nothing with weights: nothing that could differ
        return steps
    weight = next(first.parameters())
    channels = first.input_size if isinstance(first, torch.nn.LSTM) else first.in_channels
    generator = torch.Generator().manual_seed(0)
    for length in (1, 4):
        x = torch.randn(1, channels, length, generator=generator).to(weight.device, weight.dtype)
        for i, (step, original) in enumerate(zip(steps, originals, strict=True)):
            try:
                expected = original(x)
            except Exception:  # noqa: BLE001 - the modules cannot run here (a dtype this device lacks):
                return steps  # neither can the compiled form, and decoding will say so itself
            if step is not frozen[i]:
                try:
                    same = torch.equal(step(x), expected)
                except Exception:  # noqa: BLE001 - any failure of the compiled form means: use the module
                    same = False
                if not same:
                    steps[i] = frozen[i]
                    warnings.warn(f"EnCodec decoder layer {i} ({type(original).__name__}) computes otherwise than "
                                  "engine/seanet.py expects: it runs as its module, exact but slower", stacklevel=3)
            x = expected
    return steps


def _chain(steps: Sequence[Layer]) -> Layer:
    """The steps applied in order."""

    def run(x: Tensor) -> Tensor:
        for step in steps:
            x = step(x)
        return x

    return run


def _compile(module: torch.nn.Module) -> Layer:
    name = type(module).__name__
    if isinstance(module, torch.nn.ELU) and not module.inplace:
        alpha = module.alpha
        return lambda x: F.elu(x, alpha)
    if name == "EncodecConv1d" and module.norm_type == "weight_norm" and module.conv.stride[0] == 1:
        return _conv1d(module)
    if name == "EncodecConvTranspose1d" and module.norm_type == "weight_norm" and _plain_transpose(module.conv):
        return _conv_transpose1d(module)
    if name == "EncodecResnetBlock":
        block = _chain([_compile(m) for m in module.block])
        shortcut = module.shortcut if isinstance(module.shortcut, torch.nn.Identity) else _compile(module.shortcut)
        return lambda x: shortcut(x) + block(x)  # the module adds in this order: shortcut(residual) + block
    return module


def _conv1d(module: torch.nn.Module) -> Layer:
    """EncodecConv1d with stride 1, where transformers' `extra_padding` is always 0."""
    conv = module.conv
    weight, bias, dilation, groups = conv.weight.detach(), _bias(conv), conv.dilation[0], conv.groups
    padding_total = (conv.kernel_size[0] - 1) * dilation  # effective kernel - stride
    right = 0 if module.causal else padding_total // 2
    left, mode = padding_total - right, module.pad_mode

    def run(x: Tensor) -> Tensor:
        return F.conv1d(_pad1d(x, left, right, mode), weight, bias, 1, 0, dilation, groups)

    return run


def _conv_transpose1d(module: torch.nn.Module) -> Layer:
    conv = module.conv
    weight, bias, stride = conv.weight.detach(), _bias(conv), conv.stride[0]
    padding_total = conv.kernel_size[0] - stride
    right = math.ceil(padding_total * module.trim_right_ratio) if module.causal else padding_total // 2
    left = padding_total - right

    def run(x: Tensor) -> Tensor:
        y = F.conv_transpose1d(x, weight, bias, stride)
        return y[..., left : y.shape[-1] - right]

    return run


def _plain_transpose(conv: torch.nn.Module) -> bool:
    """No padding, output padding, dilation or groups: the call _conv_transpose1d makes is the module's."""
    return (conv.padding[0], conv.output_padding[0], conv.dilation[0], conv.groups) == (0, 0, 1, 1)


def _pad1d(x: Tensor, left: int, right: int, mode: str) -> Tensor:
    """transformers' EncodecConv1d._pad1d: reflect padding that also works on inputs shorter than the pad."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode, 0.0)
    length, extra = x.shape[-1], 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode, 0.0)
    return padded[..., : padded.shape[-1] - extra]


def _bias(conv: torch.nn.Module) -> Tensor | None:
    return None if conv.bias is None else conv.bias.detach()


def _without_weight_norm(module: torch.nn.Module) -> torch.nn.Module:
    """A private copy whose weight-normed convs are plain convs holding the normed weight: weight
    norm recomputes g * v / |v| on every call (measured: 57 vs 81 ms a chunk, 1 thread).
    The codec's own modules are untouched (remove_parametrizations on a deepcopy would not do: it
    deletes the property from the class the copy shares with the original)."""
    frozen = copy.deepcopy(module)
    for parent in list(frozen.modules()):
        for name, child in list(parent.named_children()):
            if parametrize.is_parametrized(child, "weight"):
                setattr(parent, name, _plain_conv(child))
    return frozen


@torch.no_grad()
def _plain_conv(conv: torch.nn.Module) -> torch.nn.Module:
    cls = parametrize.type_before_parametrizations(conv)  # nn.Conv1d or nn.ConvTranspose1d
    extra = {"output_padding": conv.output_padding} if issubclass(cls, torch.nn.ConvTranspose1d) else {}
    plain = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                device=conv.weight.device, dtype=conv.weight.dtype, **extra)
    plain.weight.copy_(conv.weight)
    if conv.bias is not None:
        plain.bias.copy_(conv.bias)
    return plain.eval()
