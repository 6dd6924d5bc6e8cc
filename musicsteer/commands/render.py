"""`musicsteer render`: generate a fixed length offline and write a WAV (and optionally the codes),
or regenerate a live session exactly from its log (`--replay session.jsonl`)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from musicsteer import __version__
from musicsteer.controllers.automation import load_automation, step_for_time
from musicsteer.engine.audio_io import read_audio, write_wav
from musicsteer.engine.codec import decode_codes, encode_audio
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator, render_codes
from musicsteer.engine.loading import LoadedModel
from musicsteer.engine.session_log import read_log
from musicsteer.engine.vectors import SteeringVectors

from .options import add_generation_options, add_model_options, attach_meter, generator_class, load, session_spec


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("render", help="generate offline to a WAV file",
                            description="Generate S seconds offline and write them to a WAV file.")
    add_model_options(parser)
    add_generation_options(parser)
    parser.add_argument("--seconds", type=float, help="seconds of new audio")
    parser.add_argument("--out", required=True, help="output WAV file")
    parser.add_argument("--init-audio", help="audio file to continue from (its last 10 s by default)")
    parser.add_argument("--init-seconds", type=float, default=10.0, help="seconds of --init-audio to use")
    parser.add_argument("--automation", help="YAML file of timed changes ({at: 4.0, alpha: 0.6}, ...)")
    parser.add_argument("--replay", help="regenerate a live session from its session.jsonl (same codes)")
    parser.add_argument("--codes-out", help="save the codes (codebooks, frames) as .npy")
    parser.set_defaults(run=run)


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prompt_codes_from(lm: LoadedModel, path: str | None, seconds: float) -> torch.Tensor | None:
    if not path:
        return None
    if not Path(path).is_file():
        raise MusicsteerError(f"init audio not found: {path}")
    return encode_audio(lm, read_audio(path, lm.sample_rate, lm.audio_channels, max_seconds=seconds))


def run(args: argparse.Namespace) -> int:
    if args.replay:
        return replay(args)
    if args.seconds is None or not args.seconds > 0:
        raise MusicsteerError(f"--seconds must be > 0, got {args.seconds}")
    if args.init_audio and not Path(args.init_audio).is_file():
        raise MusicsteerError(f"init audio not found: {args.init_audio}")
    automation = load_automation(args.automation) if args.automation else []
    spec = session_spec(args)
    lm = spec.lm
    gen = generator_class(args, lm)(lm, spec.controls, spec.vectors, steer_rule=args.steer_rule,
                                    steer_both=args.steer_both)
    meter = attach_meter(gen, args)
    readings: list[dict[str, float]] = []
    if meter is not None:
        meter.listeners.append(lambda step, scores: readings.append(scores))
    for timed in automation:
        try:
            gen.submit(timed.change, at_step=step_for_time(timed.at, lm.frame_rate))
        except MusicsteerError as err:
            raise MusicsteerError(f"{args.automation} line {timed.line}: {err}") from None
    prompt_codes = prompt_codes_from(lm, args.init_audio, args.init_seconds)
    prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
    total = prompt_frames + max(1, round(args.seconds * lm.frame_rate))
    code = finish(args, gen, total, prompt_codes, pad_end=True)
    if readings:
        mean = {label: sum(r[label] for r in readings) / len(readings) for label in readings[0]}
        print("genre meter (mean of " + str(len(readings)) + " readings): "
              + "  ".join(f"{label} {score:+.3f}" for label, score in mean.items()))
    return code


def replay(args: argparse.Namespace) -> int:
    """Rebuild the session a log describes (model, vectors, controls, settings, audio prompt) and
    apply every logged change at its logged step: the codes come out identical."""
    logged = read_log(args.replay)
    header = logged.header
    vectors_path = args.vectors or header.get("vectors")
    vectors = SteeringVectors.load(vectors_path) if vectors_path else None
    if vectors is not None and header.get("vectors_sha256") and vectors.sha256 != header["vectors_sha256"]:
        raise MusicsteerError(f"vectors file {vectors_path} is not the one the session used (sha256 differs)")
    recorded_by = header.get("engine_version")
    if recorded_by != __version__:
        # Seeded sampling draws changed in 0.2 (a race among the top-k candidates): warn, not refuse.
        print(f"musicsteer: warning: {args.replay} was recorded by musicsteer {recorded_by}, this is "
              f"{__version__}; sampled codes may differ (greedy sessions replay exactly)", file=sys.stderr)
    lm = load(args, args.model or header.get("model"))
    controls = dict(header["controls"], layers=tuple(header["controls"]["layers"]))
    gen = generator_class(args, lm)(lm, Controls(**controls), vectors, **header["settings"])
    for step, change in logged.changes:
        gen.submit(change, at_step=step)
    init = header.get("init_audio") or {}
    if init and sha256_of(init["path"]) != init["sha256"]:
        raise MusicsteerError(f"init audio {init['path']} is not the file the session used (sha256 differs)")
    prompt_codes = prompt_codes_from(lm, init.get("path"), init.get("seconds", 10.0))
    pad_end = False
    if logged.end is not None:
        new_frames, pad_end = logged.end["frames"], bool(logged.end.get("padded", False))
    elif args.seconds and args.seconds > 0:
        new_frames = round(args.seconds * lm.frame_rate)
    else:
        raise MusicsteerError(f"{args.replay} has no end record (the session was killed): give --seconds")
    return finish(args, gen, int(header.get("prompt_frames", 0)) + new_frames, prompt_codes, pad_end=pad_end)


def finish(args: argparse.Namespace, gen: Generator, total: int, prompt_codes: torch.Tensor | None,
           pad_end: bool) -> int:
    lm = gen.lm
    prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
    with tqdm(total=total, initial=prompt_frames, unit="frame", desc="render", leave=False) as bar:
        codes = render_codes(gen, total, prompt_codes, on_frame=lambda _: bar.update(1), pad_end=pad_end)
    if args.codes_out:
        np.save(args.codes_out, codes.numpy())
    audio = decode_codes(lm, codes)
    out = write_wav(args.out, audio, lm.sample_rate)
    print(f"wrote {out} ({audio.shape[-1] / lm.sample_rate:.2f} s, {lm.audio_channels} channel(s), "
          f"{lm.sample_rate} Hz)")
    return 0
