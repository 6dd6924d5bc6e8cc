"""Option groups shared by render, play and bench, and the session they describe."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import parse_list, parse_mix
from musicsteer.engine.generator import Generator
from musicsteer.engine.graph import GraphGenerator
from musicsteer.engine.loading import LoadedModel, load_model, resolve_device, resolve_dtype
from musicsteer.engine.meter import GenreMeter
from musicsteer.engine.quantize import MODES, quantize_decoder
from musicsteer.engine.steering import RULES, SITES
from musicsteer.engine.vectors import SteeringVectors

DEFAULT_MODEL = "facebook/musicgen-small"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help=f"hub id, local folder, 'tiny' (offline test model) or 'random:small|medium|large' "
                            f"(default {DEFAULT_MODEL})")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    # No argparse `choices`: a bad value must come out as one `musicsteer: error:` line (cli.main),
    # not argparse's usage block.
    group.add_argument("--quantize", metavar="MODE",
                       help="CPU only: int8 dynamic quantisation of the engine decoder's Linear layers, "
                            "'int8' (per-channel scales) or 'int8-tensor' (one scale per matrix); "
                            "needs --dtype float32")
    group.add_argument("--threads", type=int,
                       help="CPU threads for torch (default: 1 for the tiny models, torch's choice otherwise)")
    group.add_argument("--decode", choices=("auto", "graph", "eager"), default="auto",
                       help="render and play: 'graph' replays one captured CUDA graph per token, 'eager' runs "
                            "the step op by op; auto = graph on CUDA, eager on the CPU (where the static step "
                            "is slower)")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--prompt", default="", help="text prompt ('' = no text)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=250, help="1 = greedy")
    group.add_argument("--top-p", type=float, default=0.0, help="0 = off")
    group = parser.add_argument_group("steering")
    group.add_argument("--vectors", help="steering-vectors file (.safetensors)")
    group.add_argument("--steer", help="vector name, or a mix NAME=W,NAME=W")
    group.add_argument("--alpha", type=float, default=0.5, help="steering strength (with --steer)")
    group.add_argument("--layer", help="layer, or layers L,L (default: the vectors file's best layer)")
    group.add_argument("--site", choices=SITES, help="residual or attention (default: the vectors file's)")
    group.add_argument("--steer-rule", choices=RULES, default="renorm",
                       help="renorm: (h + a|h|v)/(1+a), the paper's; add: h + a v")
    group.add_argument("--steer-both", action="store_true",
                       help="steer both CFG halves (default: the conditional half only)")
    group = parser.add_argument_group("genre meter (needs --vectors)")
    group.add_argument("--meter", action="store_true", help="score the music against every vector as it plays")
    group.add_argument("--meter-every", type=int, default=25, help="tokens per meter reading (25 = 0.5 s)")
    group.add_argument("--meter-layer", type=int, help="layer to read (default: the vectors file's best layer)")
    group.add_argument("--ease-at", type=float, metavar="SCORE",
                       help="ease alpha off while the target's score holds above SCORE, back on below it")


class Loaded(NamedTuple):
    lm: LoadedModel  # what the command runs: `base` itself, or its int8 copy
    base: LoadedModel  # the model as loaded, before quantisation (bench's drift reference for int8)
    quantize: str | None  # the int8 mode applied, if any
    quantize_s: float  # wall time of quantize_decoder (it builds the fp32 FastDecoder first)


def generator_class(args: argparse.Namespace, lm: LoadedModel) -> type[Generator]:
    """The token loop --decode asks for: the captured graph by default on CUDA (launch overhead is
    what bounds an eager step there), eager on the CPU. Both give the same codes (tests/test_graph.py)."""
    graph = args.decode == "graph" or (args.decode == "auto" and lm.device.type == "cuda")
    return GraphGenerator if graph else Generator


def load(args: argparse.Namespace, name: str | None = None) -> LoadedModel:
    """Load the model the options name, with the thread count and quantisation they ask for."""
    return load_options(args, name).lm


def load_options(args: argparse.Namespace, name: str | None = None) -> Loaded:
    """`load`, keeping the unquantised model too. Every refusal happens before the weights load."""
    name, mode = _quantize_mode(name or args.model or DEFAULT_MODEL, getattr(args, "quantize", None))
    if mode is not None:
        _check_quantizable(mode, args.device, args.dtype)
    threads = args.threads or (1 if name.startswith("tiny") else None)
    if threads is not None:
        if threads < 1:
            raise MusicsteerError(f"--threads must be >= 1, got {threads}")
        # Tiny models are all overhead: a second thread only adds contention on a small machine.
        torch.set_num_threads(threads)
    base = load_model(name, args.device, args.dtype)
    if mode is None:
        return Loaded(base, base, None, 0.0)
    t0 = time.perf_counter()
    lm = quantize_decoder(base, mode)
    return Loaded(lm, base, mode, time.perf_counter() - t0)


def _quantize_mode(name: str, asked: str | None) -> tuple[str, str | None]:
    """(model name to load, int8 mode or None). A quantised model is named "NAME+MODE" (quantize_decoder),
    and session logs record that name, so `render --replay` of an int8 session quantises again."""
    base, plus, suffix = name.rpartition("+")
    if plus and suffix in MODES and not Path(name).expanduser().exists():  # a folder may have '+' in its name
        if asked is not None and asked != suffix:
            raise MusicsteerError(f"--quantize {asked} contradicts the model name {name!r} (quantised {suffix})")
        return base, suffix
    if asked is not None and asked not in MODES:
        raise MusicsteerError(f"unknown --quantize mode {asked!r}; expected one of {', '.join(MODES)}")
    return name, asked


def _check_quantizable(mode: str, device: str, dtype: str) -> None:
    # quantize_decoder refuses these too, but only after the weights have loaded (minutes for a big model).
    if resolve_device(device).type != "cpu":
        raise MusicsteerError(f"--quantize {mode} runs on the CPU only (dynamic int8 has no CUDA kernels); "
                              "use --device cpu, or --dtype bfloat16 on the GPU")
    if resolve_dtype(dtype) != torch.float32:
        raise MusicsteerError(f"--quantize {mode} quantises float32 weights: drop --dtype {dtype} "
                              "(bfloat16 is the other CPU speed option, not one to combine with int8)")


def attach_meter(gen: Generator, args: argparse.Namespace) -> GenreMeter | None:
    if not (args.meter or args.ease_at is not None):
        return None
    if gen.vectors is None:
        raise MusicsteerError("--meter and --ease-at need --vectors FILE")
    layer = args.meter_layer
    if layer is not None and not 0 <= layer < gen.lm.num_layers:
        raise MusicsteerError(f"--meter-layer {layer} out of range: this model has layers 0-{gen.lm.num_layers - 1}")
    if args.meter_every < 1:
        raise MusicsteerError(f"--meter-every must be >= 1, got {args.meter_every}")
    gen.meter = GenreMeter(gen.vectors, layer, args.meter_every, ease_at=args.ease_at)
    return gen.meter


@dataclass
class SessionSpec:
    lm: LoadedModel
    vectors: SteeringVectors | None
    controls: Controls


def session_spec(args: argparse.Namespace) -> SessionSpec:
    """Check the cheap arguments first, then load the vectors file and the model."""
    layers = parse_list(args.layer, int, f"--layer needs whole numbers like 18 or 17,19, got {args.layer!r}")
    mix = parse_mix(args.steer) if args.steer else {}
    if mix and not args.vectors:
        raise MusicsteerError("--steer needs --vectors FILE")
    vectors = SteeringVectors.load(args.vectors) if args.vectors else None
    lm = load(args)
    if vectors is not None:
        vectors.check_model(lm.num_layers, lm.d_model, lm.name)
    controls = Controls(
        prompt=args.prompt, seed=args.seed, guidance=args.guidance, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, alpha=args.alpha if mix else 0.0, mix=mix,
        layers=layers, site=args.site or "",
    )
    return SessionSpec(lm, vectors, controls)
