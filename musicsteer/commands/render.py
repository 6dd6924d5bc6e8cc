"""`musicsteer render`: generate a fixed length offline and write a WAV (and optionally the codes),
or regenerate a live session exactly from its log (`--replay session.jsonl`).

`--variations N` renders N takes of one prompt in one batched pass (engine/generator.py: B = N
streams), seeds --seed, --seed + 1, …: `out.wav` becomes `out-1.wav` … `out-N.wav` (and
`--codes-out` likewise). Take i has the codes `render --seed SEED+i-1` makes alone: always when greedy;
sampled, draw for draw unless the batch's float rounding moves a top-k cut (tests/test_batch.py)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from musicsteer.engine.errors import MusicsteerError, one_line, printable

from .options import (
    LIVE_STEERING,
    RENDER_STEERING,
    add_generation_options,
    add_model_options,
    add_params,
    bounded,
    refuse_idle,
    resolve,
)

if TYPE_CHECKING:
    import torch

    from musicsteer.engine.checkpoint import Checkpoint
    from musicsteer.engine.generator import Generator
    from musicsteer.engine.loading import LoadedModel


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("render", help="generate offline to a WAV file",
                            description="Generate S seconds offline and write them to a WAV file.")
    add_model_options(parser)
    add_generation_options(parser)
    add_params(parser, "seconds", "init_seconds")
    parser.add_argument("--out", required=True, help="output WAV file")
    parser.add_argument("--init-audio", help="audio file to continue from (its last --init-seconds)")
    parser.add_argument("--automation", help="YAML file of timed changes ({at: 4.0, alpha: 0.6}, ...)")
    parser.add_argument("--replay", help="regenerate a live session from its session.jsonl (same codes)")
    parser.add_argument("--codes-out", help="save the codes (codebooks, frames) as .npy")
    parser.add_argument("--variations", type=bounded(int, 1, MAX_VARIATIONS), default=1, metavar="N",
                        help="N takes in one batched pass, seeds --seed, --seed+1, ...: OUT-1.wav ... OUT-N.wav "
                             "(default 1: OUT itself)")
    parser.set_defaults(run=run)


MAX_VARIATIONS = 64  # streams in one batch: the KV cache grows with each (2 rows per take)


def take_paths(path: str, takes: int) -> list[Path]:
    """`out.wav` for one take; `out-1.wav` ... `out-N.wav` for N."""
    out = Path(path)
    return [out] if takes == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, takes + 1)]


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prompt_codes_from(lm: LoadedModel, path: str | None, seconds: float) -> torch.Tensor | None:
    from musicsteer.engine.audio_io import read_audio
    from musicsteer.engine.codec import encode_audio

    if not path:
        return None
    if not Path(path).is_file():
        raise MusicsteerError(f"init audio not found: {path}")
    return encode_audio(lm, read_audio(path, lm.sample_rate, lm.audio_channels, max_seconds=seconds))


def run(args: argparse.Namespace) -> int:
    from musicsteer.controllers.automation import load_automation, schedule
    from musicsteer.engine.files import writable_file

    from .setup import attach_meter, generator_class, session_spec

    if args.replay:
        refuse_overrides(args)
    else:
        refuse_idle(args, steering=(LIVE_STEERING, RENDER_STEERING))
    resolve(args)
    for out in take_paths(args.out, args.variations):
        writable_file(out, "--out", make_folder=True)  # write_wav makes the missing folders
    for codes_out in take_paths(args.codes_out, args.variations) if args.codes_out else []:
        writable_file(codes_out, "--codes-out")
    if args.variations > 1 and (args.meter or args.ease_at is not None):
        raise MusicsteerError("--meter and --ease-at read one stream: drop them or --variations")
    if args.replay:
        return replay(args)
    if args.seconds is None:
        raise MusicsteerError("render needs --seconds S (or --replay SESSION.jsonl)")
    if args.init_audio and not Path(args.init_audio).is_file():
        raise MusicsteerError(f"init audio not found: {args.init_audio}")
    automation = load_automation(args.automation) if args.automation else []
    spec = session_spec(args)
    lm = spec.lm
    timed = schedule(automation, lm.frame_rate, args.seconds, args.automation)  # refuses events past the end
    takes = [dataclasses.replace(spec.controls, seed=spec.controls.seed + i) for i in range(args.variations)]
    gen = generator_class(args, lm)(lm, takes if len(takes) > 1 else takes[0], spec.vectors,
                                    steer_rule=args.steer_rule, steer_both=args.steer_both, slew=args.slew)
    meter = attach_meter(gen, args)
    readings: list[dict[str, float]] = []
    if meter is not None:
        gen.listeners.add(lambda event: readings.append(event.scores) if hasattr(event, "scores") else None)
    for (step, change), event in zip(timed, automation, strict=True):
        try:
            for control in gen.rows:  # every take follows the automation
                control.submit(change, at_step=step)
        except MusicsteerError as err:  # an unknown vector or a layer this model lacks
            raise type(err)(f"{args.automation} line {event.line}: {err}") from None
    prompt_codes = prompt_codes_from(lm, args.init_audio, args.init_seconds)
    prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
    total = prompt_frames + max(1, round(args.seconds * lm.frame_rate))
    code = finish(args, gen, total, prompt_codes, pad_end=True)
    if readings:
        mean = {label: sum(r[label] for r in readings) / len(readings) for label in readings[0]}
        print("genre meter (mean of " + str(len(readings)) + " readings): "
              + "  ".join(f"{label} {score:+.3f}" for label, score in mean.items()))
    return code


# What a replay takes from the command line besides its log: where to write, how to run, and where the
# session's files are now (--vectors, --init-audio: checked against their logged sha256); --seconds for
# a log without an end record. Everything that decides the music is the log's.
REPLAY_TAKES = {"seconds", "quantize", "threads", "decode"}


def refuse_overrides(args: argparse.Namespace) -> None:
    """One line if a flag that decides the music is given with --replay (it would be silently ignored)."""
    from musicsteer.engine.params import PARAMS

    given = [row.cli for row in PARAMS.values() if row.cli and row.name not in REPLAY_TAKES
             and getattr(args, row.dest, None) is not None]
    given += ["--steer-both"] * bool(getattr(args, "steer_both", False)) + ["--automation"] * bool(args.automation)
    given += ["--variations"] * (args.variations > 1) + ["--meter"] * bool(args.meter)
    if given:
        raise MusicsteerError(f"{given[0]} cannot be given with --replay: the log decides the music (only --out, "
                              "--codes-out, --model, --device, --dtype, --quantize, --threads, --decode, --vectors, "
                              "--init-audio and, for a log without an end record, --seconds apply)")


def replay(args: argparse.Namespace) -> int:
    """Rebuild the session a log describes (model, vectors, controls, settings, audio prompt) and
    apply every logged change at its logged step: the codes come out identical. Every logged value
    is held to the start-up rules (a hand-edited NaN is one line and exit 2)."""
    from musicsteer import __version__
    from musicsteer.engine.control import Controls
    from musicsteer.engine.files import existing_file
    from musicsteer.engine.loading import dtype_name
    from musicsteer.engine.session_log import read_log
    from musicsteer.engine.vectors import SteeringVectors

    from .setup import generator_class, load

    logged = read_log(args.replay)
    header = logged.header
    if args.vectors and not header.get("vectors_sha256"):
        raise MusicsteerError(f"{args.replay} used no steering vectors: drop --vectors")
    if args.seconds is not None and logged.end is not None:
        raise MusicsteerError(f"{args.replay} has an end record ({logged.end['frames']} frames): drop --seconds "
                              "(it is for a log whose session was killed)")
    vectors_path = args.vectors or header.get("vectors")
    try:
        vectors = SteeringVectors.load(vectors_path) if vectors_path else None
    except MusicsteerError as err:
        raise type(err)(f"{args.replay}: {err}" if not args.vectors else str(err)) from None
    if vectors is not None and header.get("vectors_sha256") and vectors.sha256 != header["vectors_sha256"]:
        raise MusicsteerError(f"vectors file {vectors_path} is not the one the session used (sha256 differs)")
    recorded_by = header.get("engine_version")
    if recorded_by != __version__:
        # Seeded sampling draws changed in 0.2 (a race among the top-k candidates) and 0.3 (candidates in
        # token-id order): warn, not refuse.
        print(one_line(f"musicsteer: warning: {args.replay} was recorded by musicsteer {one_line(recorded_by, 30)}, "
                       f"this is {__version__}; sampled codes may differ (greedy sessions replay exactly)", 1000),
              file=sys.stderr)
    if set(header["settings"]) - SETTINGS_KEYS:
        raise MusicsteerError(f"{args.replay}: the header's settings are not this engine's "
                              f"({', '.join(sorted(map(str, header['settings'])))[:200]})")
    init = dict(header.get("init_audio") or {})
    if init and args.init_audio:  # the session's audio prompt, moved: the same file (sha256), elsewhere
        init["path"] = args.init_audio
    elif args.init_audio:
        raise MusicsteerError(f"{args.replay} continues no audio prompt: drop --init-audio")
    point = logged.resume  # a take after a window slide: resumed there, no older state (nor audio prompt) needed
    if init and point is None and sha256_of(existing_file(init["path"], f"{args.replay}: the session's init "
                                                          "audio")) != init["sha256"]:
        raise MusicsteerError(f"init audio {init['path']} is not the file the session used (sha256 differs)")
    if args.dtype is None and header.get("dtype") is not None:  # the session's, as its model is
        args.dtype = header["dtype"]
    lm = load(args, args.model or header["model"])
    logged_model = header.get("model_fingerprint")
    if isinstance(logged_model, str) and logged_model != lm.fingerprint:
        print(one_line(f"musicsteer: warning: {args.replay} was made with model {one_line(logged_model, 60)}; this is "
                       f"{lm.fingerprint}: the weights differ, so the codes will differ", 1000), file=sys.stderr)
    dtype, logged_dtype = dtype_name(lm.dtype), header.get("dtype")  # (older logs do not say)
    if logged_dtype is not None and logged_dtype != dtype:
        print(one_line(f"musicsteer: warning: {args.replay} was recorded in {one_line(logged_dtype, 20)}; this "
                       f"replay runs {dtype}, so the codes may differ (give --dtype {logged_dtype})", 1000),
              file=sys.stderr)
    for key in ("sample_rate", "frame_rate"):  # another codec: its frames are other sounds
        if header.get(key) is not None and header[key] != getattr(lm, key):
            raise MusicsteerError(f"{args.replay} was made at {key} {header[key]}; model {lm.name} has "
                                  f"{getattr(lm, key)}")
    controls = header["controls"]  # checked by read_log, in Controls' types
    try:  # (checked by read_log; the model's own bounds, such as its layer count, are checked here)
        gen = generator_class(args, lm)(lm, Controls(**controls), vectors, **header["settings"])
    except MusicsteerError as err:
        raise type(err)(f"{args.replay}: {err}") from None
    prompt_codes = prompt_codes_from(lm, init.get("path"), init.get("seconds", 10.0)) if point is None else None
    prompt_frames = header.get("prompt_frames", 0) if point is not None or prompt_codes is None \
        else int(prompt_codes.shape[-1])
    if prompt_frames != header.get("prompt_frames", 0):
        raise MusicsteerError(f"{args.replay}: the header says the audio prompt held {header.get('prompt_frames', 0)} "
                              f"frames; its file gives {prompt_frames}")
    pad_end, start = False, logged.start_step  # a take started mid-session: regenerate up to it, keep it
    if logged.end is not None:
        new_frames, pad_end = start + logged.end["frames"], bool(logged.end.get("padded", False))
    elif args.seconds:
        new_frames = start + round(args.seconds * lm.frame_rate)
    else:
        raise MusicsteerError(f"{args.replay} has no end record (the session was killed): give --seconds")
    # Steps this replay runs: one per new frame, plus the delay pattern's tail. Generation runs ahead
    # of the recording, so a take's log may hold changes made after its last frame, up to the steps
    # its end record counts: they cannot touch its frames. A change past that would never apply and
    # is refused, as an automation event past the end is.
    steps = new_frames + gen.delay.max_delay
    logged_steps = start + logged.end["steps"] if logged.end is not None else steps - 1
    late = [step for step, _ in logged.changes if step >= steps and step > logged_steps]
    if late:
        cause = "than its end record says" if logged.end is not None else "than --seconds covers"
        raise MusicsteerError(f"{args.replay}: a change at step {late[0]} lies past the {steps} steps of this "
                              f"replay: the log holds more {cause}")
    try:
        for step, change in logged.changes:
            if step < steps:
                gen.control.submit(change, at_step=step)
    except MusicsteerError as err:
        raise type(err)(f"{args.replay}: {err}") from None
    first = prompt_frames + start if start else 0  # a take from the session's start holds the prompt too
    if point is not None and point.first_frame > first:
        raise MusicsteerError(f"{args.replay}: the take starts at frame {first}, before the window slide it "
                              f"resumes from made frame {point.first_frame}")
    return finish(args, gen, prompt_frames + new_frames, prompt_codes, pad_end=pad_end, first=first, resume=point)


# What a session log's header may set besides the controls (Generator's keyword arguments).
SETTINGS_KEYS = {"window_seconds", "keep_seconds", "steer_rule", "steer_both", "slew"}


def finish(args: argparse.Namespace, gen: Generator, total: int, prompt_codes: torch.Tensor | None,
           pad_end: bool, first: int = 0, resume: Checkpoint | None = None) -> int:
    """Generate `total` frames (prompt included), decode them at once, write the WAV and --codes-out
    from frame `first` on (a replayed take that started mid-session). resume: start from that window
    slide's state instead of the session's start (the codes then begin at its window's first frame)."""
    import numpy as np
    from tqdm import tqdm

    from musicsteer.engine import checkpoint
    from musicsteer.engine.audio_io import write_wav
    from musicsteer.engine.codec import decode_codes
    from musicsteer.engine.generator import render_batch

    lm = gen.lm
    prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
    origin = resume.first_frame if resume is not None else prompt_frames
    with tqdm(total=total, initial=origin, unit="frame", desc="render", leave=False) as bar:
        if resume is None:
            batch = render_batch(gen, total, prompt_codes, on_frame=lambda _: bar.update(1), pad_end=pad_end)
        else:
            if not checkpoint.resume(gen, resume):
                print(f"musicsteer: warning: {printable(args.replay)} was sampled on another kind of device; its "
                      "random state does not carry over, so sampled codes will differ", file=sys.stderr)
            batch = checkpoint.continue_from(gen, resume, total, pad_end, lambda _: bar.update(1))[None]
            first -= resume.frame_offset  # the codes start at the resumed window's first frame
    hop = lm.sample_rate // lm.frame_rate
    outs = take_paths(args.out, gen.batch)
    codes_outs = take_paths(args.codes_out, gen.batch) if args.codes_out else [None] * gen.batch
    for codes, out, codes_out, control in zip(batch, outs, codes_outs, gen.rows, strict=True):
        if codes_out is not None:
            np.save(codes_out, codes[:, first:].numpy())
        audio = decode_codes(lm, codes)[..., first * hop :]  # decoded whole: the take's first samples see their past
        out = write_wav(out, audio, lm.sample_rate)
        seed = f", seed {control.values.seed}" if gen.batch > 1 else ""
        print(f"wrote {printable(out)} ({audio.shape[-1] / lm.sample_rate:.2f} s, {lm.audio_channels} channel(s), "
              f"{lm.sample_rate} Hz{seed})")
    return 0
