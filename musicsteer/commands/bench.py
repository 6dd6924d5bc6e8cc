"""`musicsteer bench`: this engine against transformers' generate on the same model, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musicsteer.engine.benchmark import run_benchmark
from musicsteer.engine.soak import run_soak

from .options import add_model_options, load


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="measure decode speed against transformers' generate",
                            description="Steps/s, real-time factor and time to first audio of the engine, "
                                        "with and without steering, against model.generate in the same run.")
    add_model_options(parser)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead: a live null-device session this long; time to first audio, decode cost "
                             "and memory over time")
    parser.add_argument("--json", help="write the report to this JSON file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    lm = load(args)
    if args.soak:
        report = run_soak(lm, args.soak)
        print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    report = run_benchmark(lm, steps=args.steps, repeats=args.repeats)
    for result in report["results"]:
        print(f"{result['name']:>14}: {result['steps_per_s']:8.1f} steps/s  rtf {result['rtf']:6.2f}  "
              f"ttfa {result['ttfa_s'] * 1000:7.1f} ms")
    for name, value in report["ratios"].items():
        print(f"{name}: {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
