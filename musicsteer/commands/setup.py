"""What render, play, bench and eval build from their (already checked) options: the model, the
vectors, the starting controls, the token loop and the meter. Imports the model stack: commands
import this module when they run, never at start-up (`--help` stays instant)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from musicsteer.engine.control import Controls, controls_of
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator
from musicsteer.engine.graph import GENERATORS, decode_step
from musicsteer.engine.loading import LoadedModel, load_model, resolve_device, resolve_dtype
from musicsteer.engine.meter import GenreMeter
from musicsteer.engine.params import LIVE
from musicsteer.engine.quantize import MODES, quantize_decoder
from musicsteer.engine.vectors import SteeringVectors

from .options import DEFAULT_MODEL


class Loaded(NamedTuple):
    lm: LoadedModel  # what the command runs: `base` itself, or its int8 copy
    base: LoadedModel  # the model as loaded, before quantisation (bench's drift reference for int8)
    quantize: str | None  # the int8 mode applied, if any
    quantize_s: float  # wall time of quantize_decoder (it builds the fp32 FastDecoder first)


def generator_class(args: argparse.Namespace, lm: LoadedModel) -> type[Generator]:
    """The token loop --decode asks for on the model's device (`graph.decode_step`: every command
    that takes --decode decides through it). Both give the same codes (tests/test_graph.py)."""
    return GENERATORS[decode_step(args.decode, lm.device)]


def load(args: argparse.Namespace, name: str | None = None) -> LoadedModel:
    """Load the model the options name, with the thread count and quantisation they ask for."""
    return load_options(args, name).lm


def load_options(args: argparse.Namespace, name: str | None = None) -> Loaded:
    """`load`, keeping the unquantised model too. Every refusal happens before the weights load."""
    name, mode = quantize_mode(name or args.model or DEFAULT_MODEL, getattr(args, "quantize", None))
    dtype = args.dtype or "float32"
    if mode is not None:
        _check_quantizable(mode, args.device, dtype)
    set_threads(args, name)
    base = load_model(name, args.device, dtype)
    if mode is None:
        return Loaded(base, base, None, 0.0)
    t0 = time.perf_counter()
    lm = quantize_decoder(base, mode)
    return Loaded(lm, base, mode, time.perf_counter() - t0)


def set_threads(args: argparse.Namespace, name: str | None = None) -> None:
    """This process's torch threads for the model the options name (--threads, else 1 for tiny models).
    `load` calls it; so does `eval --ray`, whose driver loads no model but scores CLAP with the same
    threads (a thread count changes CLAP's last bits, and results.json must equal the run without Ray)."""
    name = name or args.model or DEFAULT_MODEL
    threads = args.threads or (1 if name.startswith("tiny") else None)
    if threads is not None:
        # Tiny models are all overhead: a second thread only adds contention on a small machine.
        torch.set_num_threads(threads)


def quantize_mode(name: str, asked: str | None) -> tuple[str, str | None]:
    """(model name to load, int8 mode or None). A quantised model is named "NAME+MODE" (quantize_decoder),
    and session logs record that name, so `render --replay` of an int8 session quantises again."""
    base, plus, suffix = name.rpartition("+")
    if plus and suffix in MODES and not Path(name).expanduser().exists():  # a folder may have '+' in its name
        if asked is not None and asked != suffix:
            raise MusicsteerError(f"--quantize {asked} contradicts the model name {name!r} (quantised {suffix})")
        return base, suffix
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
    gen.meter = GenreMeter(gen.vectors, layer, args.meter_every, ease_at=args.ease_at)
    return gen.meter


@dataclass
class SessionSpec:
    lm: LoadedModel
    vectors: SteeringVectors | None
    controls: Controls


def session_spec(args: argparse.Namespace) -> SessionSpec:
    """The vectors file and the model (flags are already checked: options.resolve), and the controls
    they start with. Steering flags are refused without --vectors before anything loads."""
    if args.steer and not args.vectors:
        raise MusicsteerError("--steer needs --vectors FILE")
    vectors = SteeringVectors.load(args.vectors) if args.vectors else None
    lm = load(args)
    if vectors is not None:
        vectors.check_model(lm.num_layers, lm.d_model, lm.name)
    # Every live row's flag, by the table (a flag parsed but left out here would be replaced by its default).
    controls = controls_of({row.name: getattr(args, row.dest, None) for row in LIVE.values()})
    return SessionSpec(lm, vectors, controls)
