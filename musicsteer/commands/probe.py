"""`musicsteer probe extract|analyze|train`: from labelled audio to a steering-vectors file.

extract  audio folder/CSV -> pooled decoder activations per layer, cached (resumable) in ACTS_DIR
analyze  ACTS_DIR -> per-layer k-means ARI/NMI and probe accuracy, Jaccard matrix (PNG, JSON, CSV)
train    ACTS_DIR -> one probe per layer -> VECTORS.safetensors (the render/play --vectors file)
The probes modules (sklearn, matplotlib) are imported when a sub-command runs, so the rest of the
CLI starts as fast as before.
"""

from __future__ import annotations

import argparse

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.params import SITES, Param
from musicsteer.probes.settings import (  # no torch: the probe rows
    BATCH,
    LAYER,
    METHODS,
    POOLS,
    PROMPT,
    SEED,
    SEGMENT_SECONDS,
    TEST_FRACTION,
    WORKERS,
)

from .options import DEFAULT_MODEL, add_ray_option
from .options import flag_type as row_type


def _help(row: Param) -> str:
    default = f"; default {row.default!r}" if isinstance(row.default, str) else f"; default {row.default:g}"
    return f"{row.help} ({row.describe_range(f' {row.unit}' if row.unit else '')}{default})".replace("%", "%%")



def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("probe", help="extract activations, analyse them, train steering vectors",
                            description=__doc__.splitlines()[0])
    jobs = parser.add_subparsers(dest="probe_command", required=True, metavar="JOB")

    extract = jobs.add_parser("extract", help="labelled audio -> activations cache",
                              description="Run labelled audio through the model and cache pooled activations.")
    extract.add_argument("--data", required=True, help="folder with one sub-folder per label, a CSV path,label, or "
                                                       "hf:PATH[:SPLIT], a Hugging Face audio dataset saved with "
                                                       "save_to_disk (needs musicsteer[datasets])")
    extract.add_argument("--label-column", help="with --data hf:...: the label column (default: 'label', else the "
                                                "dataset's one ClassLabel column)")
    extract.add_argument("--workers", type=row_type(WORKERS), default=WORKERS.default,
                         help=_help(WORKERS) + "; the cache is the same for every count")
    extract.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL}; 'tiny' for tests)")
    extract.add_argument("--out", required=True, help="activations folder (ACTS_DIR); a rerun resumes it")
    extract.add_argument("--segment-seconds", type=row_type(SEGMENT_SECONDS), default=SEGMENT_SECONDS.default,
                         help=_help(SEGMENT_SECONDS))
    extract.add_argument("--prompt", type=row_type(PROMPT), default=PROMPT.default,
                         help=f"text condition of the pass ('' = none, the default; {PROMPT.describe_range()})")
    extract.add_argument("--batch", type=row_type(BATCH), default=BATCH.default, help=_help(BATCH))
    extract.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    extract.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    add_ray_option(extract, "the forward passes")
    # Accepted only to be refused in words: the other model commands take --quantize.
    extract.add_argument("--quantize", help=argparse.SUPPRESS)
    extract.set_defaults(run=run_extract)

    analyze = jobs.add_parser("analyze", help="per-layer clustering and probe report",
                              description="k-means ARI/NMI and probe accuracy per layer; Jaccard matrix.")
    analyze.add_argument("acts_dir", metavar="ACTS_DIR")
    analyze.add_argument("--out", required=True, help="report folder")
    _add_common(analyze)
    analyze.set_defaults(run=run_analyze)

    train = jobs.add_parser("train", help="train per-layer probes and write a vectors file",
                            description="Train one probe per layer and export its directions.")
    train.add_argument("acts_dir", metavar="ACTS_DIR")
    train.add_argument("--out", required=True, help="vectors file (.safetensors)")
    train.add_argument("--layer", type=row_type(LAYER), default=LAYER.default, help=_help(LAYER))
    _add_common(train)
    train.set_defaults(run=run_train)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="mse",
                        help="mse (the paper's one-hot probe), logistic, diffmean (default mse)")
    parser.add_argument("--site", choices=SITES, default="residual")
    parser.add_argument("--pool", choices=POOLS, default="mean", help="time pooling of the activations")
    parser.add_argument("--seed", type=row_type(SEED), default=SEED.default, help="held-out split and k-means seed")
    parser.add_argument("--test-fraction", type=row_type(TEST_FRACTION), default=TEST_FRACTION.default,
                        help=_help(TEST_FRACTION))


def run_extract(args: argparse.Namespace) -> int:
    if args.quantize is not None:
        raise MusicsteerError("probe extract takes no --quantize: vectors trained on the full-precision "
                              "activations apply unchanged to an int8 model (render, play, bench, eval --quantize)")
    from musicsteer.engine.files import writable_folder
    from musicsteer.probes.extract import extract

    writable_folder(args.out, "--out", make=True)  # before the model loads: the cache is written batch by batch
    extract(args.data, args.model, args.out, args.segment_seconds, args.prompt, args.batch, args.device,
            args.dtype, args.workers, args.label_column, args.ray)
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    from musicsteer.probes.analyze import analyze

    report = analyze(args.acts_dir, args.out, args.site, args.pool, args.seed, args.test_fraction, args.method)
    best = report["layers"][report["best_layer_ari"]]
    print(f"wrote {args.out}/report.json, layers.csv, layers.png, jaccard.png; highest ARI {best['ari']:.3f} "
          f"(NMI {best['nmi']:.3f}) at layer {best['layer']}; best probe accuracy "
          f"{max(r['probe_accuracy'] for r in report['layers']):.3f} at layer {report['best_layer_probe']}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from musicsteer.probes.train import train

    result, path = train(args.acts_dir, args.out, args.method, args.layer, args.site, args.pool, args.seed,
                         args.test_fraction)
    accuracy = ", ".join(f"{a:.2f}" for a in result.accuracy)
    layer = result.best_layer if args.layer == "best" else args.layer
    print(f"wrote {path}: {len(result.labels)} labels ({', '.join(result.labels)}), {args.method} probes on "
          f"{args.site}/{args.pool}; held-out accuracy per layer [{accuracy}]; best_layer {layer}")
    return 0
