"""`musicsteer render`: generate a fixed length offline and write a WAV (and optionally the codes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from musicsteer.controllers.automation import load_automation, step_for_time
from musicsteer.engine.audio_io import read_audio, write_wav
from musicsteer.engine.codec import decode_codes, encode_audio
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.generator import Generator, render_codes

from .options import add_generation_options, add_model_options, session_spec


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("render", help="generate offline to a WAV file",
                            description="Generate S seconds offline and write them to a WAV file.")
    add_model_options(parser)
    add_generation_options(parser)
    parser.add_argument("--seconds", type=float, required=True, help="seconds of new audio")
    parser.add_argument("--out", required=True, help="output WAV file")
    parser.add_argument("--init-audio", help="audio file to continue from (its last 10 s by default)")
    parser.add_argument("--init-seconds", type=float, default=10.0, help="seconds of --init-audio to use")
    parser.add_argument("--automation", help="YAML file of timed changes ({at: 4.0, alpha: 0.6}, ...)")
    parser.add_argument("--codes-out", help="save the codes (codebooks, frames) as .npy")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.seconds > 0:
        raise MusicsteerError(f"--seconds must be > 0, got {args.seconds}")
    if args.init_audio and not Path(args.init_audio).is_file():
        raise MusicsteerError(f"init audio not found: {args.init_audio}")
    automation = load_automation(args.automation) if args.automation else []
    spec = session_spec(args)
    lm = spec.lm
    gen = Generator(lm, spec.controls, spec.vectors, steer_rule=args.steer_rule, steer_both=args.steer_both)
    for timed in automation:
        try:
            gen.submit(timed.change, at_step=step_for_time(timed.at, lm.frame_rate))
        except MusicsteerError as err:
            raise MusicsteerError(f"{args.automation} line {timed.line}: {err}") from None

    prompt_codes = None
    if args.init_audio:
        audio = read_audio(args.init_audio, lm.sample_rate, lm.audio_channels, max_seconds=args.init_seconds)
        prompt_codes = encode_audio(lm, audio)
    prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
    new_frames = max(1, round(args.seconds * lm.frame_rate))

    total = prompt_frames + new_frames
    with tqdm(total=total, initial=prompt_frames, unit="frame", desc="render", leave=False) as bar:
        codes = render_codes(gen, total, prompt_codes, on_frame=lambda _: bar.update(1))
    if args.codes_out:
        np.save(args.codes_out, codes.numpy())
    audio = decode_codes(lm, codes)
    out = write_wav(args.out, audio, lm.sample_rate)
    print(f"wrote {out} ({audio.shape[-1] / lm.sample_rate:.2f} s, {lm.audio_channels} channel(s), "
          f"{lm.sample_rate} Hz)")
    return 0
