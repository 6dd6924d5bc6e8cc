"""`musicsteer toy`: the toy MusicGen, trained here on music rendered here (musicsteer/toy, docs/toy.md).

corpus  OUT --clips N --seed S: N clips of 10 s (classical, electronic, jazz, rock in turn), 32 kHz mono WAVs in
        a folder per genre with manifest.csv (captions, split) and instruments.csv; a rerun resumes.
train   CORPUS RUN [--hours H] [--threads T] [--seed S]: the stages that exist (codec, then decoder) in RUN,
        each resumed from its checkpoint or skipped once finished (musicsteer/toy/plan.py); the model is
        RUN/decoder/model. Building the corpus needs the `toy` extra (music21, pyfluidsynth, pedalboard) and
        FluidSynth with a General MIDI soundfont.
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

    stages = ", then ".join(f"{p.name} ({p.steps:,} steps)" for p in PLAN)
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

    from musicsteer.toy.plan import PLAN, model_dir, train_all

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
    final = model_dir(run, PLAN[-1].name)
    print(f"model: {final} (try: musicsteer render --model {final} --prompt jazz)")
    return 0
