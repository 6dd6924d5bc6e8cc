"""`musicsteer toy`: the toy MusicGen, trained here on music rendered here (musicsteer/toy, docs/toy.md).

corpus  OUT --clips N --seed S: N clips of 10 s (classical, electronic, jazz, rock in turn), 32 kHz mono WAVs in
        a folder per genre with manifest.csv (captions, split) and instruments.csv; a rerun resumes.
train   CORPUS RUN [--hours H] [--threads T] [--seed S]: the stages (codec, judge, decoder, vectors) in RUN,
        each resumed from its checkpoint or skipped once finished (musicsteer/toy/plan.py); the model is
        RUN/decoder/model. Building the corpus needs the `toy` extra (music21, pyfluidsynth, pedalboard) and
        FluidSynth with a General MIDI soundfont.
vectors CORPUS RUN: the vectors stage alone (the probe pipeline on the held-out clips with RUN's MusicGen),
        into RUN/vectors; `toy train` runs it last.
ship    RUN: RUN's MusicGen, judge and vectors into the package (float16 safetensors, at most 30 MB), where
        `--model toy`, `--clap toy` and `--vectors toy` find them (musicsteer/toy/ship.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from musicsteer.engine.params import Param

from .options import bounded, flag_type, typed

MAX_CLIPS = 1_000_000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("toy", help="the toy MusicGen: render its corpus (docs/toy.md)",
                            description=__doc__.splitlines()[0])
    jobs = parser.add_subparsers(dest="toy_command", required=True, metavar="JOB")
    corpus = jobs.add_parser("corpus", help="render the labelled corpus (four genres, captions)",
                             description="Render N labelled 10 s clips into OUT: a folder per genre, manifest.csv "
                                         "(path,label,genre,instrument,tempo,key,mood,caption,split), "
                                         "instruments.csv (path,label). A rerun with the same seed resumes.")
    corpus.add_argument("out", metavar="OUT", help="corpus folder: new, empty, or one this command made with "
                                                   "the same --seed (then resumed or extended)")
    corpus.add_argument("--clips", type=bounded(int, 1, MAX_CLIPS), required=True,
                        help=f"number of clips, a quarter per genre (1 to {MAX_CLIPS})")
    corpus.add_argument("--seed", type=typed("seed"), default=0, help="corpus seed: the same seed gives the same "
                                                                      "bytes (default 0)")
    corpus.add_argument("--workers", type=bounded(int, 1, 64), default=2,
                        help="rendering processes (default 2)")
    corpus.set_defaults(run=run_corpus)

    from musicsteer.toy.plan import DEFAULT_HOURS, PLAN  # (light: no torch)

    stages = ", then ".join(p.name if p.name == "vectors" else f"{p.name} ({p.steps:,} steps)" for p in PLAN)
    train = jobs.add_parser("train", help="train the toy MusicGen on a corpus: every stage, resumable",
                            description=f"Train the toy MusicGen in RUN from CORPUS: {stages}. Deterministic; "
                                        "a rerun of the same command resumes (after Ctrl-C, SIGTERM, a kill or the "
                                        "time budget) and skips finished stages. Exit 0: all done; 1: stopped at "
                                        "the budget; 130: interrupted.")
    train.add_argument("corpus", metavar="CORPUS", help="a corpus folder made by `musicsteer toy corpus`")
    train.add_argument("run_dir", metavar="RUN", help="run folder: new, empty, or one this command made from the "
                                                  "same corpus and seed (then resumed)")
    train.add_argument("--hours", type=flag_type(Param("hours", "number", "", low=0, high=10_000, low_open=True)),
                       default=DEFAULT_HOURS, help=f"wall-clock budget of all stages, summed over resumptions "
                                               f"(> 0; default {DEFAULT_HOURS:g})")
    train.add_argument("--threads", type=typed("threads"), default=2,
                       help="torch threads (default 2; keep it the same on every resumption for the same bytes)")
    train.add_argument("--seed", type=typed("seed"), default=0, help="training seed (default 0)")
    train.set_defaults(run=run_train)

    vectors = jobs.add_parser("vectors", help="the toy's steering vectors: probe pipeline on the held-out clips",
                              description="Run probe extract, analyze and train on CORPUS's held-out clips with "
                                          "RUN's trained MusicGen, for the genre and the lead instrument: "
                                          "RUN/vectors/{genre,instrument}.safetensors, report-*/ (per-layer ARI, "
                                          "NMI, probe accuracy), tables.md. A rerun resumes the extraction.")
    vectors.add_argument("corpus", metavar="CORPUS", help="the corpus RUN was trained on")
    vectors.add_argument("run_dir", metavar="RUN", help="a run folder whose decoder stage is finished")
    vectors.add_argument("--threads", type=typed("threads"), default=2, help="torch threads (default 2)")
    vectors.set_defaults(run=run_vectors)

    ship = jobs.add_parser("ship", help="put a finished run's model, judge and vectors into the package",
                           description="Copy RUN's MusicGen (RUN/decoder/model), judge (RUN/judge/model) and "
                                       "vectors (RUN/vectors) into the package folder that --model toy, --clap toy "
                                       "and --vectors toy read, as float16 safetensors; refused over 30 MB.")
    ship.add_argument("run_dir", metavar="RUN", help="a run folder whose stages are all finished")
    ship.set_defaults(run=run_ship)


def run_corpus(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from musicsteer.toy.corpus import build, prepare

    out = Path(args.out).expanduser()
    prepare(out, args.seed)  # a bad OUT or a missing renderer: one line before the bar shows
    with tqdm(total=args.clips, unit="clip", desc="corpus") as bar:
        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        rows = build(out, args.clips, args.seed, workers=args.workers, progress=progress)
    held = sum(r["split"] == "heldout" for r in rows)
    print(f"{len(rows)} clips in {args.out} ({held} held out): manifest.csv, instruments.csv")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import shlex

    from musicsteer.toy.plan import model_dir, train_all

    corpus, run = Path(args.corpus).expanduser(), Path(args.run_dir).expanduser()
    again = (f"musicsteer toy train {shlex.quote(args.corpus)} {shlex.quote(args.run_dir)} --threads {args.threads} "
             f"--seed {args.seed}")
    try:  # (bad CORPUS or RUN: one line, exit 2, from train_all's checks before any work)
        outcomes = train_all(corpus, run, args.hours, args.threads, args.seed)
    except KeyboardInterrupt:  # between steps' deferred handling: loading, encoding the codes, saving a model
        print(f"toy train: interrupted; finished stages and checkpoints are kept. To resume: {again} --hours "
              f"{args.hours:g}", file=sys.stderr)
        return 130
    last = outcomes[-1]
    if last.stopped == "interrupted":
        print(f"toy train: interrupted in the {last.name} stage; checkpoint saved. To resume: {again} --hours "
              f"{args.hours:g}", file=sys.stderr)
        return 130
    if last.stopped not in ("done", "finished earlier"):
        print(f"toy train: stopped at the {args.hours:g} h budget in the {last.name} stage; checkpoint saved. "
              f"To go on: {again} --hours H with H > {args.hours:g}", file=sys.stderr)
        return 1
    final = model_dir(run, "decoder")
    print(f"model: {final} (try: musicsteer render --model {final} --prompt jazz); vectors: {run / 'vectors'}; "
          f"to ship it: musicsteer toy ship {shlex.quote(args.run_dir)}")
    return 0


def run_vectors(args: argparse.Namespace) -> int:
    import json

    from musicsteer.engine.errors import MusicsteerError, shown
    from musicsteer.toy.plan import RUN_STAMP, check_corpus, finished, model_dir
    from musicsteer.toy.vectors import make_vectors

    corpus, run = Path(args.corpus).expanduser(), Path(args.run_dir).expanduser()
    if not finished(run, "decoder"):
        raise MusicsteerError(f"RUN {shown(args.run_dir)} has no finished decoder stage: run `musicsteer toy train "
                              "CORPUS RUN` first")
    stamp = json.loads((run / RUN_STAMP).read_text()) if (run / RUN_STAMP).is_file() else {}
    if stamp.get("corpus") not in (None, check_corpus(corpus)):
        raise MusicsteerError(f"CORPUS {shown(args.corpus)} is not the corpus RUN was trained on")
    facts = make_vectors(corpus, run, model_dir(run, "decoder"), threads=args.threads)
    print((run / "vectors" / "tables.md").read_text(encoding="utf-8"))
    figures = ", ".join(f"{k} {v:.4g}" for k, v in facts["held_out"].items())
    print(f"vectors: {run / 'vectors'} ({figures}); to ship them: musicsteer toy ship {args.run_dir}")
    return 0


def run_ship(args: argparse.Namespace) -> int:
    from musicsteer.toy.ship import ship
    from musicsteer.toy.shipped import weights_dir

    manifest = ship(Path(args.run_dir).expanduser())
    sizes = ", ".join(f"{part} {size / 1e6:.2f} MB" for part, size in manifest["sizes"].items())
    print(f"shipped {args.run_dir} into {weights_dir()}: {manifest['bytes'] / 1e6:.2f} MB ({sizes}); try: "
          "musicsteer render --model toy --prompt jazz --vectors toy")
    return 0
