"""`musicsteer toy`: the toy MusicGen, trained here on music rendered here (musicsteer/toy, docs/toy.md).

corpus  OUT --clips N --seed S: N clips of 10 s (classical, electronic, jazz, rock in turn), 32 kHz mono WAVs in
        a folder per genre with manifest.csv (captions, split) and instruments.csv; a rerun resumes.
Needs the `toy` extra (music21, pyfluidsynth, pedalboard) and FluidSynth with a General MIDI soundfont.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import bounded, typed

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
