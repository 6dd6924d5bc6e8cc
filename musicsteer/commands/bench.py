"""`musicsteer bench`: this engine against transformers' generate on the same model, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.params import PARAMS

from .options import DEFAULT_MODEL, add_model_options, add_ray_option, bounded, resolve, typed

RECAPTURE_TOKENS = 1000  # --recapture-tokens' default (None until then: a flag given is told from one left out)
MODES = ("soak", "heard", "extract")  # instead of the default run (the engine's contenders against generate)
# The options that mean something in some modes only (None: the default run), with their defaults. argparse
# leaves them None, so a flag given to a mode that would ignore it is refused (`check_mode`), then filled.
MODE_OPTIONS: dict[str, tuple[tuple[str | None, ...], Any]] = {
    "steps": ((None,), 100), "repeats": ((None, "extract"), 3), "recapture_tokens": ((None,), None),
    "knob_changes": ((None,), 50), "drift_steps": ((None,), 100), "batch": ((None,), 1),
    "decode": ((None, "soak", "heard"), None), "output_device": (("heard",), "null"),
    "knob_rate": (("soak",), 0.0), "blocksize": (("heard",), PARAMS["blocksize"].default),  # play's default
    "workers": (("extract",), 2), "ray": (("extract",), None),
    # probe extract runs float32 or --dtype, never int8, with its own threads (1 for tiny models: cpu_threads)
    "quantize": ((None, "soak", "heard"), None), "threads": ((None, "soak", "heard"), None),
}

EPILOG = """\
contenders, all on the one loaded model, alternated within every repeat:
  engine               the eager token loop (CFG 3, top-k 250), no steering
  engine+steer         the same, one residual steering term
  engine+graph         GraphGenerator: on CUDA one captured graph replayed per token
  engine+graph+steer   the same, alpha changing every token, mix/layer/site every few (at_step)
  hf_generate          model.generate on the same model, EnCodec decode excluded
  engine@BN            with --batch N: engine (and engine+graph@BN) decoding N streams at once

reported (JSON with --json: results[], ratios, cold_start, recapture_check, knob_latency):
  steps/s, rtf (steps/s / 50), ms/step        per contender, median of --repeats sessions
  ttfa_s (warm)       first frame of codes, median of the timed sessions (a graph session captures anew)
  ttfa_audio_s (warm) first PCM chunk out of the streaming EnCodec decoder, as a session makes it
  ttfa_cold_s         the contender's first session in this process; engine+graph runs first on the
                      freshly loaded model (FastDecoder build, first kernel calls, capture), then engine
  graph_builds        captures per graph session (1 = no recapture while steering moves)
  ratios              engine_vs_hf_generate, graph_vs_engine, graph_vs_hf_generate,
                      graph_steer_vs_hf_generate, steer_overhead_pct, graph_steer_overhead_pct;
                      with --batch N: engine@BN_vs_engine_frames_per_s (frames/s of N streams against one)
  frames_per_s        with --batch N, the batched contenders' steps/s x N (extra.frames_per_s)
  recapture_check     graph_builds over --recapture-tokens with alpha/mix/layer/site moving every token
  knob_latency        submit (another thread) -> applied at the token boundary, median/p95/max ms,
                      eager and graph, over --knob-changes alpha changes at seeded random moments

--decode auto (the default) times both token steps side by side; --decode eager or graph times only
that step's engine contenders (with hf_generate), cold start and knob latency; the recapture check
needs the graph step. --soak runs the step --decode picks (auto: graph on CUDA, eager on the CPU).

--heard SECONDS: knob -> heard (submit to the first frame made after it at the DAC), per live session
through --output-device's own clock: contenders --buffer 1.0 (the baseline) and --buffer auto; each
reports heard_median_ms, heard_p95_ms, changes, underruns, rebuffers, xruns, chunk_frames, lead_s.

with --dtype bfloat16|float16 or --quantize int8|int8-tensor the contenders run on that model, and:
  drift               its logits against a float32 reference with the same weights, teacher-forced
                      over --drift-steps tokens: max_abs, mean_abs, rel_max (of the largest logit),
                      argmax_agree_pct; for --quantize the reference is the model it was made from
  speed_option        which precision hf_generate ran in: the model's dtype, so float32 under
                      --quantize (only the engine's decoder is quantised)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="measure decode speed against transformers' generate",
                            description="Steps/s, real-time factor, time to first audio (warm and cold), "
                                        "knob -> applied latency and steering overhead of the engine, eager "
                                        "and CUDA-graph, against model.generate in the same run.",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--steps", type=bounded(int, 1, 100_000),
                        help="timed tokens per session (default 100)")
    parser.add_argument("--repeats", type=bounded(int, 1, 1000),
                        help="timed sessions per contender (default 3; also with --extract)")
    parser.add_argument("--recapture-tokens", type=bounded(int, 0, 1_000_000), metavar="N",
                        help=f"tokens of the recapture check (default {RECAPTURE_TOKENS}; 0 skips it; "
                             "not with --decode eager)")
    parser.add_argument("--knob-changes", type=bounded(int, 0, 100_000), metavar="N",
                        help="alpha changes timed for knob -> applied latency (default 50; 0 skips it)")
    parser.add_argument("--drift-steps", type=bounded(int, 0, 100_000), metavar="N",
                        help="with --dtype other than float32 or --quantize: teacher-forced tokens of the logit "
                             "drift against float32 (default 100; 0 skips it)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--soak", type=bounded(float, 1, 86400), metavar="SECONDS",
                        help="instead: a live null-device session this long; time to first audio, decode cost "
                             "and memory over time")
    parser.add_argument("--knob-rate", type=bounded(float, 0.1, 1000), metavar="HZ",
                        help="with --soak: move alpha HZ times a second over OSC, start a take a minute before the "
                             "end and replay it (memory, the take's log, replay exactness)")
    modes.add_argument("--heard", type=bounded(float, 1, 3600), metavar="SECONDS",
                        help="instead: knob -> heard through a live session per buffer (1.0 s, auto) of SECONDS "
                             "each, alpha changed every 0.5 s, on --output-device (default null)")
    parser.add_argument("--output-device", help="with --heard: a PortAudio device (e.g. a JACK server's 'system') "
                                                "or 'null' (default)")
    parser.add_argument("--blocksize", type=typed("blocksize"), metavar="BLOCKSIZE",
                        help="with --heard: the device's audio callback block, frames (default auto: play's, "
                             "the device's own period where PortAudio reports one)")
    parser.add_argument("--batch", type=bounded(int, 1, 64), metavar="N",
                        help="also time engine and engine+graph decoding N streams at once (seeds 0..N-1), "
                             "frames/s against one stream (default 1: not)")
    modes.add_argument("--extract", type=bounded(int, 3, 100_000), metavar="N",
                        help="instead: `probe extract` of N synthetic files (stereo FLAC, 44.1/48/22.05 kHz), "
                             "--workers W against serial in the same run")
    parser.add_argument("--workers", type=bounded(int, 1, 64), metavar="W",
                        help="with --extract: decoding worker processes of the contender (default 2)")
    add_ray_option(parser, "with --extract: a third contender, `probe extract --ray`; the forward passes")
    parser.add_argument("--json", help="write the report to this JSON file")
    parser.set_defaults(run=run)


def summary(report: dict[str, Any]) -> list[str]:
    """The report's headline figures, one line each, for the terminal."""
    from musicsteer.bench import drift as bench_drift

    lines = []
    for result in report["results"]:
        cold = result.get("ttfa_cold_s")
        line = (f"{result['name']:>18}: {result['steps_per_s']:8.1f} steps/s  rtf {result['rtf']:6.2f}  "
                f"ttfa {result['ttfa_s'] * 1000:7.1f} ms")
        if cold is not None:
            line += f"  cold {cold * 1000:7.1f} ms"
        if result.get("ttfa_audio_s") is not None:
            line += f"  first audio {result['ttfa_audio_s'] * 1000:7.1f} ms"
        if "frames_per_s" in result["extra"]:
            line += f"  frames/s {result['extra']['frames_per_s']:8.1f} (B={result['extra']['batch']})"
        if "graph_builds" in result["extra"]:
            line += f"  graph builds {result['extra']['graph_builds']}"
        lines.append(line)
    lines += [f"{name}: {value:.3f}" for name, value in report["ratios"].items()]
    build_s = report["cold_start"]["fast_decoder_build_s"]
    lines.append(f"FastDecoder build (in the first cold session): {build_s * 1000:.1f} ms")
    check = report.get("recapture_check")
    if check:
        lines.append(f"recapture check: {check['graph_builds']} graph build(s) over {check['tokens']} tokens, "
                     f"{check['changes_applied']} steering changes applied")
    for name, knob in (report.get("knob_latency") or {}).items():
        lines.append(f"knob -> applied ({name}): median {knob['median_ms']:.2f} ms  p95 {knob['p95_ms']:.2f} ms  "
                     f"max {knob['max_ms']:.2f} ms  ({knob['changes_applied']}/{knob['changes_submitted']} "
                     f"applied, {knob['ms_per_step']:.2f} ms/step)")
    return lines + bench_drift.summary(report)


def check_mode(args: argparse.Namespace) -> str | None:
    """The run's mode (one of MODES, or None for the default run). Refuses, in one line, an option given
    to a mode that would ignore it (MusicsteerError), then fills the mode options left out."""
    mode = next((name for name in MODES if getattr(args, name) is not None), None)
    for dest, (modes, default) in MODE_OPTIONS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
        elif mode not in modes:
            flag = "--" + dest.replace("_", "-")
            where = " or ".join("the default run" if m is None else f"--{m}" for m in modes)
            this = "the default run (engine against generate)" if mode is None else f"--{mode}"
            raise MusicsteerError(f"{flag} applies to {where}, not to {this}: drop it")
    return mode


def decode_steps_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The token steps whose contenders run: both for --decode auto (the bench compares them), else
    the one named. Sets --recapture-tokens' default; refuses it given with --decode eager (MusicsteerError)."""
    from musicsteer.bench.benchmark import DECODE_STEPS

    steps = DECODE_STEPS if args.decode == "auto" else (args.decode,)
    if args.recapture_tokens is None:
        args.recapture_tokens = RECAPTURE_TOKENS if "graph" in steps else 0
    elif args.recapture_tokens and "graph" not in steps:
        raise MusicsteerError(f"--recapture-tokens counts the graph step's captures; --decode {args.decode} runs no "
                              "graph: drop one of them")
    return steps


def run(args: argparse.Namespace) -> int:
    import torch

    from musicsteer.bench import drift as bench_drift
    from musicsteer.bench.benchmark import run_benchmark
    from musicsteer.bench.soak import run_soak
    from musicsteer.engine.files import writable_file
    from musicsteer.engine.graph import decode_step
    from musicsteer.engine.loading import resolve_dtype

    from .setup import load_options, quantize_mode

    drift_asked = bool(args.drift_steps)  # (0 skips it)
    check_mode(args)
    if drift_asked and quantize_mode(args.model or DEFAULT_MODEL, args.quantize)[1] is None and (
            resolve_dtype(args.dtype or "float32") == torch.float32):
        raise MusicsteerError("--drift-steps measures a --dtype bfloat16|float16 or --quantize model against "
                              "float32: give one of them, or drop it")
    resolve(args)
    decode_steps = decode_steps_of(args)
    if args.json:
        writable_file(args.json, "--json")
    lm, base, quantize, quantize_s = load_options(args)
    if args.heard:
        from musicsteer.bench.heard import run_heard

        report = run_heard(lm, args.heard, decode_step(args.decode, lm.device), args.output_device, args.blocksize)
        print(json.dumps(report, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    if args.extract:
        from musicsteer.bench.extract import run_extract_bench

        report = run_extract_bench(lm, args.extract, args.workers, args.repeats, args.ray)
        print(json.dumps(report, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    if args.soak:
        report = run_soak(lm, args.soak, decode_step(args.decode, lm.device), knob_rate=args.knob_rate)
        print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    report = run_benchmark(lm, steps=args.steps, repeats=args.repeats, recapture_tokens=args.recapture_tokens,
                           knob_changes=args.knob_changes, decode_steps=decode_steps, batch=args.batch)
    option = bench_drift.option_name(lm, quantize)
    if option is not None:
        bench_drift.annotate(report, option, quantize, quantize_s)
        if args.drift_steps:
            # After the timed sessions, so their cold starts were cold; a dtype option loads the reference now.
            report["drift"] = bench_drift.drift_section(lm, base, option, args.drift_steps)
    print("\n".join(summary(report)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
