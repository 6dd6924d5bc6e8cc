"""`musicsteer eval`: the paper's §IV evaluation (CLAP Table I, 2AFC listening test, α sweep) and the
effect studies (α curve with 95 % intervals, cross-effect, hold drift, fusion).

  musicsteer eval --model M --vectors FILE|toy [--clap ID|DIR|toy|tiny] [--pairs a:b,c:d|all] [--n N]
                  [--alphas A,B,...] [--hold-seconds S [--hold-window W]] [--fusion S:A+B,...] --out DIR
  musicsteer eval score-2afc answers.csv [answers2.csv ...] [--out DIR] [--alternative two-sided|greater]

The evaluation modules (CLAP, scipy, matplotlib) are imported when the command runs, so the rest
of the CLI starts as fast as before.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.params import SAMPLER
from musicsteer.evaluation.protocol import (  # no torch: the protocol's rows and defaults
    ALPHAS,
    BLEND_PROMPT,
    CLAP_BATCH,
    CLAP_TEMPLATE,
    CLIP_BATCH,
    CLIP_SECONDS,
    HOLD_SECONDS,
    HOLD_WINDOW,
    SOURCE_PROMPT,
    STEER_TEXT,
    N,
)

from .options import add_model_options, add_params, add_ray_option, resolve, typed, vectors_path
from .options import flag_type as row_type


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="CLAP genre-transition table, alpha sweep and a 2AFC listening test",
                            description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--vectors", type=vectors_path, metavar="FILE",
                        help="steering-vectors file (.safetensors) with a vector per genre, or toy (the toy's)")
    parser.add_argument("--out", help="output folder (a rerun reuses the clips already there)")
    parser.add_argument("--clap", default="laion/clap-htsat-unfused",
                        help="CLAP hub id, local folder, or 'tiny' (offline random model; default %(default)s)")
    parser.add_argument("--pairs", help="transitions SOURCE:TARGET,..., or all (every ordered pair of the vectors "
                                        "file's genres; default: rock:classical,classical:electronic,"
                                        "electronic:jazz,jazz:rock)")
    parser.add_argument("--n", type=row_type(N), default=N.default,
                        help=f"{N.help} ({N.describe_range()}; default %(default)s)")
    add_params(parser, "seed", "seconds", "alpha", "layer", "site", "steer_rule",
               defaults={"seconds": CLIP_SECONDS})  # eval's clips; the rest take the table's defaults (resolve)
    parser.add_argument("--source-seconds", type=typed("seconds"), default=CLIP_SECONDS,
                        help=f"length of a source clip (default {CLIP_SECONDS:g})")
    parser.add_argument("--alphas", help=f"extra strengths for the α curve, e.g. 0.2,0.4,0.6,0.8 (at most "
                                         f"{ALPHAS.size}, each {ALPHAS.describe_range()}, none twice; α = 0 and "
                                         "--alpha are always in it)")
    parser.add_argument("--hold-seconds", type=row_type(HOLD_SECONDS), default=0.0,
                        help=f"hold drift: per transition and clip, a continuation this long steered at --alpha, "
                             f"scored span by span ({HOLD_SECONDS.describe_range(' s')}; default: no hold study)")
    parser.add_argument("--hold-window", type=row_type(HOLD_WINDOW), default=HOLD_WINDOW.default,
                        help=f"{HOLD_WINDOW.help} ({HOLD_WINDOW.describe_range(' s')}; default %(default)g)")
    parser.add_argument("--fusion", help="fusions SOURCE:A+B,...: steered toward A and B at once (the mix knob's "
                                         "{A: 1, B: 1}) at --alpha, against each alone (SOURCE:A and SOURCE:B must "
                                         "be in --pairs)")
    parser.add_argument("--steer-text", choices=STEER_TEXT, default=STEER_TEXT[0],
                        help="text of the steered arm: the source prompt (default) or none (the paper's wording)")
    parser.add_argument("--source-prompt", type=typed("prompt"), default=SOURCE_PROMPT,
                        help="source clips' text; may use {source} (default: %(default)r)")
    parser.add_argument("--blend-prompt", type=typed("prompt"), default=BLEND_PROMPT,
                        help="prompted baseline's text; may use {source} and {target} (default: %(default)r)")
    parser.add_argument("--labels", help="CLAP label set, comma-separated (default: the vectors file's labels)")
    parser.add_argument("--template", type=typed("prompt"), default=CLAP_TEMPLATE,
                        help="CLAP text per label, with one {} for the label (default: transformers' zero-shot "
                             "pipeline's, %(default)r)")
    add_params(parser, *SAMPLER)  # every sampler row of the table: a new one is a flag here by itself
    parser.add_argument("--trial-seed", type=typed("seed"), default=0, help="seed of the 2AFC trial and A/B order")
    parser.add_argument("--clap-batch", type=row_type(CLAP_BATCH), default=CLAP_BATCH.default,
                        help=f"{CLAP_BATCH.help} ({CLAP_BATCH.describe_range()}; default %(default)s)")
    parser.add_argument("--batch", type=row_type(CLIP_BATCH), default=CLIP_BATCH.default,
                        help=f"{CLIP_BATCH.help} ({CLIP_BATCH.describe_range()}; default %(default)s)")
    add_ray_option(parser, "the clips")
    parser.set_defaults(run=run)
    # eval's own flags and defaults: given before `score-2afc`, they would land in eval's namespace unread
    own = {action.dest: (action.option_strings[0], action.default) for action in parser._actions
           if action.option_strings and action.dest not in ("help", "eval_command")}

    jobs = parser.add_subparsers(dest="eval_command", metavar="score-2afc")
    score = jobs.add_parser("score-2afc", help="score 2AFC answers CSVs (paper Table II)",
                            description="Per transition: share of steered choices and an exact binomial p-value.")
    score.add_argument("answers", nargs="+", help="answers CSV(s) exported by listening_test.html")
    score.add_argument("--out", dest="score_out", help="folder for 2afc.md and 2afc.json")
    score.add_argument("--alternative", choices=("two-sided", "greater"), default="two-sided",
                       help="binomial test against chance: two-sided (default) or greater (steered preferred)")
    score.set_defaults(run=partial(run_score, own=own))


def run(args: argparse.Namespace) -> int:
    from musicsteer.engine.files import writable_folder
    from musicsteer.engine.sampling import Sampler
    from musicsteer.evaluation.protocol import (
        Protocol,
        parse_alphas,
        parse_fusions,
        parse_labels,
        parse_pairs,
    )
    from musicsteer.evaluation.runner import EvalRequest, evaluate

    if not args.vectors:
        raise MusicsteerError("eval needs --vectors FILE (a steering-vectors file with one vector per genre)")
    if not args.out:
        raise MusicsteerError("eval needs --out DIR")
    writable_folder(args.out, "--out", make=True)  # before the model loads: clips are written as they are made
    resolve(args)
    if args.layer is not None and len(args.layer) > 1:
        raise MusicsteerError(f"eval steers one layer: give --layer L, got {','.join(map(str, args.layer))}")
    layer = args.layer[0] if args.layer else None
    protocol = Protocol(
        pairs=parse_pairs(args.pairs), n=args.n, seed=args.seed, source_seconds=args.source_seconds,
        seconds=args.seconds, alpha=args.alpha, alphas=parse_alphas(args.alphas), layer=layer,
        site=args.site or "", steer_rule=args.steer_rule, steer_text=args.steer_text,
        source_prompt=args.source_prompt, blend_prompt=args.blend_prompt,
        sampling=Sampler(**{name: getattr(args, row.dest) for name, row in SAMPLER.items()}),
        hold_seconds=args.hold_seconds, hold_window=args.hold_window, fusions=parse_fusions(args.fusion),
    )
    request = EvalRequest(protocol, args.vectors, Path(args.out), args.clap, args.template, parse_labels(args.labels),
                          args.trial_seed, args.clap_batch, args.decode, args.batch, args.ray, args.device)
    from .setup import load, set_threads

    if args.ray is not None:
        set_threads(args)  # what `load` would do here: CLAP scores in this process with the same threads
    results = evaluate(request, partial(load, args))  # a partial, not a lambda: --ray's actors are sent it
    out = Path(args.out)
    print((out / "table.md").read_text(encoding="utf-8"))
    check = results["alpha0_check"]
    print(f"α = 0: {check['identical']} of {check['clips']} steered clips equal the unsteered ones, code for code")
    studies = "".join(f", {name}.csv/.png" for name in ("hold", "fusion") if name in results)
    print(f"wrote {out}/table.md, results.json, alpha_sweep.png, effect.csv, effect-*.png, cross_effect.csv/.png"
          f"{studies}, manifest.json, listening_test.html and clips/")
    return 0


def run_score(args: argparse.Namespace, own: dict[str, tuple[str, object]] | None = None) -> int:
    from musicsteer.engine.files import writable_folder
    from musicsteer.evaluation import twoafc
    from musicsteer.evaluation.report import write_json

    given = [flag for dest, (flag, default) in (own or {}).items() if getattr(args, dest, default) != default]
    if given:  # e.g. `eval --out DIR score-2afc …`: the folder would never be written
        raise MusicsteerError(f"{given[0]} is an option of the evaluation run, not of score-2afc (its own are "
                              "--out and --alternative, given after it)")
    if args.score_out:
        writable_folder(args.score_out, "--out", make=True)

    result = twoafc.score(twoafc.read_answers(args.answers), args.alternative)
    table = twoafc.markdown(result)
    print(table, end="")
    if args.score_out:
        out = Path(args.score_out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MusicsteerError(f"cannot create {out}: {e.strerror or e}") from None
        (out / "2afc.md").write_text(table, encoding="utf-8")
        write_json(out / "2afc.json", {**result, "files": list(args.answers)})
        print(f"wrote {out}/2afc.md and 2afc.json")
    return 0
