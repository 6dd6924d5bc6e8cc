"""Option groups shared by render, play and bench, and the session they describe."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import parse_mix
from musicsteer.engine.generator import Generator
from musicsteer.engine.loading import LoadedModel, load_model
from musicsteer.engine.meter import GenreMeter
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
    group.add_argument("--threads", type=int,
                       help="CPU threads for torch (default: 1 for the tiny models, torch's choice otherwise)")


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


def load(args: argparse.Namespace, name: str | None = None) -> LoadedModel:
    """Load the model the options name, with the thread count they ask for."""
    name = name or args.model or DEFAULT_MODEL
    threads = args.threads or (1 if name.startswith("tiny") else None)
    if threads is not None:
        if threads < 1:
            raise MusicsteerError(f"--threads must be >= 1, got {threads}")
        # Tiny models are all overhead: a second thread only adds contention on a small machine.
        torch.set_num_threads(threads)
    return load_model(name, args.device, args.dtype)


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


def _layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MusicsteerError(f"--layer needs whole numbers like 18 or 17,19, got {text!r}") from None


def session_spec(args: argparse.Namespace) -> SessionSpec:
    """Check the cheap arguments first, then load the vectors file and the model."""
    layers = _layers(args.layer)
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
