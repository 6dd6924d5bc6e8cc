"""The evaluation protocol of `musicsteer eval` (the paper's §IV), as data: what is generated, how.

For each transition source→target (default the paper's four: rock→classical, classical→electronic,
electronic→jazz, jazz→rock) and each clip i in 0..N-1:

1. Source clip: `source_seconds` of audio from the text prompt `source_prompt` ("a {source} music
   piece"), seed `seed + i`, no steering. Source clips are per genre, not per pair, so two pairs
   with the same source share their starting material (the paper's pool of source samples).
2. Both arms continue from the same start: the source clip's codes are prefilled as an audio
   prompt (no EnCodec round trip, so the start is token-exact) and `seconds` of new audio follow.
   Both arms draw with the same sampling seed `seed + 10_000 + i` (common random numbers: the
   arms differ by their condition only).
   (a) prompted: text `blend_prompt` ("{source} music transitioning into {target}"), no steering;
   (b) steered: the source text unchanged (`--steer-text none`: no text, as the paper describes),
       steered toward the target's vector with strength α at the given layer (default the
       vectors file's best_layer and site), per token, on the conditional CFG half.
3. Every α of the sweep (`--alphas`) gets its own steered clips from the same starts and seeds.
   The sweep always holds α = 0 (the curve's baseline), and every continuation also gets
   (c) unsteered: the steered arm's text and seed, no vectors at all. The α = 0 clips must equal
       these code for code (checked every run: effect.alpha0_check).
4. `--pairs all`: every ordered pair of the vectors file's genres (12 for four).
5. `--hold-seconds S`: per transition and clip, one continuation S seconds long at the main α (the
   engine's own window slide past the model's window), scored in consecutive `--hold-window` spans.
6. `--fusion SOURCE:A+B`: from the source clips, steered toward the mix {A: 1, B: 1} at the main α
   (the live `mix` knob's definition: the unit-normalised weighted sum), next to A alone and B alone
   (the transitions SOURCE:A and SOURCE:B, which must be in --pairs).

Clips are made in blocks of one kind and α, each across every transition and clip in the same order
(plan.py): the α = 0 block and the unsteered block have the same batch shapes row for row, so a
batch's rounding cannot tell them apart.

A clip's WAV holds the whole transition (source then continuation, decoded in one pass so the
seam is the codec's own); CLAP scores only the continuation (see clap.py).
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from musicsteer.engine.errors import BadType, MusicsteerError, OutOfRange, TooLarge, one_line, shown
from musicsteer.engine.params import LIVE, NAME_CHARS, PARAMS, Param, check_text

if TYPE_CHECKING:
    from musicsteer.engine.sampling import Sampler

ALL_PAIRS = "all"  # --pairs all: every ordered pair of the vectors file's genres, resolved once it is read
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("rock", "classical"), ("classical", "electronic"), ("electronic", "jazz"), ("jazz", "rock"),
)
SOURCE_PROMPT = "a {source} music piece"
BLEND_PROMPT = "{source} music transitioning into {target}"
CONTINUATION_SEED_OFFSET = 10_000  # keeps continuation seeds apart from source seeds
STEER_TEXT = ("source", "none")
CLIP_SECONDS = 10.0  # eval's default clip length, source and continuation (the paper's 10 s)
CLAP_TEMPLATE = "This is a sound of {}."  # transformers' zero-shot-audio-classification default

# eval's own counts, bounded at the door like the table's rows (their flags: commands/eval.py).
N = Param("--n", "whole", "source clips per transition", low=1, high=100_000, default=20)
CLAP_BATCH = Param("--clap-batch", "whole", "clips per CLAP forward pass", low=1, high=4096, default=8)
# Clips of one kind generated together, one stream each of a batched Generator (engine/generator.py).
CLIP_BATCH = Param("--batch", "whole", "clips generated together, one stream each (1: one at a time)", low=1,
                   high=64, default=8)
# The sweep's strengths: the alpha row, as a list (duplicates refused, like a `many` row's).
ALPHAS = dataclasses.replace(PARAMS["alpha"], name="--alphas", many=True, size=16, default=None)
# Hold drift: one long steered continuation per clip, scored window by window (both in seconds).
HOLD_SECONDS = Param("--hold-seconds", "number", "seconds α is held in the hold-drift study", "s", 0, 600,
                     low_open=True)
HOLD_WINDOW = Param("--hold-window", "number", "seconds of each scored span of a hold", "s", 1, 60, default=5.0)
FUSIONS_MAX = 16
LABELS_MAX = 256  # CLAP labels (--labels or the vectors file's): one CLAP text each per batch
PROMPT = LIVE["prompt"]  # every text the protocol sends to MusicGen is held to the table's prompt row
PROMPT_FIELDS = {"--source-prompt": ("source",), "--blend-prompt": ("source", "target")}


def default_sampler() -> Sampler:
    """The table's sampler settings (`sampling.Sampler`: one field per "sampler" row). Imported here, not
    at the top: the engine's sampler needs torch, and the CLI reads this module's defaults without it."""
    from musicsteer.engine.sampling import Sampler

    return Sampler()


@dataclass(frozen=True)
class Protocol:
    """Everything that decides which clips exist and what their codes are."""

    pairs: tuple[tuple[str, str], ...] | str = DEFAULT_PAIRS  # or ALL_PAIRS until the vectors file is read
    n: int = N.default
    seed: int = PARAMS["seed"].default
    source_seconds: float = CLIP_SECONDS
    seconds: float = CLIP_SECONDS
    alpha: float = PARAMS["alpha"].default
    alphas: tuple[float, ...] = ()
    layer: int | None = None  # None: the vectors file's best_layer
    site: str = ""  # "": the vectors file's site
    steer_rule: str = PARAMS["steer_rule"].default
    steer_text: str = "source"
    source_prompt: str = SOURCE_PROMPT
    blend_prompt: str = BLEND_PROMPT
    sampling: Sampler = field(default_factory=default_sampler)  # every clip's, passed whole to the generator
    hold_seconds: float = 0.0  # 0: no hold-drift study
    hold_window: float = HOLD_WINDOW.default
    fusions: tuple[tuple[str, str, str], ...] = ()  # (source, a, b): steered toward a and b at once

    @property
    def genres(self) -> list[str]:
        pairs = () if self.pairs == ALL_PAIRS else self.pairs
        return list(dict.fromkeys([*(g for pair in pairs for g in pair), *(g for f in self.fusions for g in f)]))

    @property
    def sweep(self) -> list[float]:
        """Every α that gets steered clips: 0 (the baseline), the main α and the sweep, ascending."""
        return sorted({0.0, self.alpha, *self.alphas})

    def resolved(self, genres: list[str]) -> Protocol:
        """This protocol with `--pairs all` made every ordered pair of `genres` (the vectors file's labels)."""
        if self.pairs != ALL_PAIRS:
            return self
        if len(genres) < 2:
            raise MusicsteerError(f"--pairs all needs at least two genres; the vectors file has "
                                  f"{one_line(', '.join(genres), 200) or 'none'}")
        return dataclasses.replace(self, pairs=tuple((a, b) for a in genres for b in genres if a != b))

    def source_text(self, source: str) -> str:
        return self.source_prompt.format(source=source)

    def blend_text(self, source: str, target: str) -> str:
        return self.blend_prompt.format(source=source, target=target)

    def steered_text(self, source: str) -> str:
        return self.source_text(source) if self.steer_text == "source" else ""

    def source_seed(self, index: int) -> int:
        return self.seed + index

    def continuation_seed(self, index: int) -> int:
        return self.seed + CONTINUATION_SEED_OFFSET + index

    def to_json(self) -> dict:
        data = asdict(self)
        data["pairs"] = self.pairs if self.pairs == ALL_PAIRS else [f"{a}:{b}" for a, b in self.pairs]
        data["fusions"] = [fusion_name(*f) for f in self.fusions]
        return data


def parse_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """"rock:classical,jazz:rock" -> (("rock", "classical"), ("jazz", "rock")); None: the paper's four;
    "all": ALL_PAIRS (every ordered pair of the vectors file's genres, Protocol.resolved)."""
    if text is None:
        return DEFAULT_PAIRS
    if text.strip() == ALL_PAIRS:
        return ALL_PAIRS
    pairs = []
    for part in text.split(","):
        source, sep, target = part.strip().partition(":")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            raise BadType(f"--pairs needs SOURCE:TARGET[,SOURCE:TARGET...], got {shown(part.strip())}")
        pairs.append((source, target))
    return check_pairs(tuple(pairs))


def check_pairs(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Transitions of two different genre names each (vector-name sized), none twice."""
    if not pairs:
        raise BadType("--pairs needs at least one SOURCE:TARGET")
    for source, target in pairs:
        for genre in (source, target):
            check_text("a --pairs genre", genre, NAME_CHARS, empty=False)
        if source == target:
            raise BadType(f"--pairs: {shown(source)}:{shown(target)} is no transition (source equals target)")
    if len(set(pairs)) != len(pairs):
        raise BadType(f"--pairs lists a transition twice: {shown(pairs)}")
    slugs: dict[str, str] = {}
    for genre in dict.fromkeys(g for pair in pairs for g in pair):  # clip folders are named by slug
        if (other := slugs.setdefault(slug(genre), genre)) != genre:
            raise BadType(f"--pairs: genres {shown(other)} and {shown(genre)} would share the clip folder "
                          f"{shown(slug(genre))}")
    return pairs


def parse_fusions(text: str | None) -> tuple[tuple[str, str, str], ...]:
    """"rock:jazz+electronic,..." -> (("rock", "jazz", "electronic"), ...); None or '': none (check_fusions)."""
    fusions = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        source, sep, targets = part.strip().partition(":")
        a, plus, b = targets.partition("+")
        names = [name.strip() for name in (source, a, b)]
        if not sep or not plus or not all(names) or "+" in b:
            raise BadType(f"--fusion needs SOURCE:A+B[,SOURCE:A+B...], got {shown(part.strip())}")
        fusions.append(tuple(names))
    return tuple(fusions)


def check_fusions(fusions: tuple[tuple[str, str, str], ...], pairs: tuple[tuple[str, str], ...] | str) -> None:
    """Each fusion steers toward two different genres, neither its source, and is compared with each
    alone: SOURCE:A and SOURCE:B must be transitions of --pairs (checked once `all` is resolved)."""
    if len(fusions) > FUSIONS_MAX:
        raise TooLarge(f"--fusion: at most {FUSIONS_MAX} fusions, got {len(fusions)}")
    seen = set()
    for source, a, b in fusions:
        for genre in (source, a, b):
            check_text("a --fusion genre", genre, NAME_CHARS, empty=False)
        name = fusion_name(source, a, b)
        if a == b or source in (a, b):
            raise BadType(f"--fusion {shown(name)} names a genre twice: it steers from one genre toward two others")
        if (source, frozenset((a, b))) in seen:
            raise BadType(f"--fusion lists {shown(name)} twice")
        seen.add((source, frozenset((a, b))))
        missing = [f"{source}:{t}" for t in (a, b) if pairs != ALL_PAIRS and (source, t) not in pairs]
        if missing:
            raise BadType(f"--fusion {shown(name)} is compared with each target alone: add {' and '.join(missing)} "
                          "to --pairs (or give --pairs all)")


def fusion_name(source: str, a: str, b: str) -> str:
    return f"{source}:{a}+{b}"


def parse_alphas(text: str | None) -> tuple[float, ...]:
    """`0.2,0.4,0.6` -> the sweep's strengths: each held to the alpha row, none twice ('' or None: none)."""
    if text is None or not text.replace(",", "").strip():
        return ()
    return ALPHAS.parse(text)


def parse_labels(text: str | None) -> list[str]:
    """`rock,jazz` -> CLAP labels, checked (check_labels); None or '': the vectors file's labels."""
    return check_labels([label.strip() for label in (text or "").split(",") if label.strip()], "--labels")


def check_labels(labels: list[str], where: str = "the CLAP labels") -> list[str]:
    """At most LABELS_MAX names of at most NAME_CHARS characters, none twice."""
    if len(labels) > LABELS_MAX:
        raise TooLarge(f"{where}: at most {LABELS_MAX} labels, got {len(labels)}")
    for label in labels:
        check_text(f"a label of {where}", label, NAME_CHARS, empty=False)
    if len(set(labels)) != len(labels):
        raise BadType(f"{where} lists a label twice: {shown(labels)}")
    return labels


def template_fields(flag: str, template: object, allowed: tuple[str, ...]) -> list[str]:
    """The fields of a str.format template, each a bare `{name}` with a name in `allowed` ("" is `{}`,
    the one positional value). No format spec or conversion: `{source:>400000000}` would format
    a 400 MB prompt before its length could be refused. The template itself is a prompt-row text."""
    text = PROMPT.named(flag).check(template)[0]
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise BadType(f"{flag} {shown(text)} is not a format template: {e} (write {{{{ and }}}} for braces)") from None
    names = " and ".join("{" + name + "}" for name in allowed)
    used = []
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or spec or conversion is not None:
            field_text = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise BadType(f"{flag} may only use {names} (no format spec or conversion), got {shown(field_text)}")
        used.append(name)
    return used


def check_clap_template(template: object) -> str:
    """The CLAP text per label: exactly one `{}`, filled with the label (clap.py formats it so)."""
    if template_fields("--template", template, ("",)).count("") != 1:
        raise BadType(f"--template needs exactly one {{}} where the genre goes, got {shown(template)}")
    return str(template)


def check_genres(protocol: Protocol, vector_labels: list[str], clap_labels: list[str]) -> None:
    """Every genre of every pair needs a steering vector (the target is steered toward; the source
    must be a known genre too) and a CLAP label (the target is scored)."""
    for genre in protocol.genres:
        if genre not in vector_labels:
            raise MusicsteerError(f"unknown genre {shown(genre)}: the vectors file has "
                                  f"{one_line(', '.join(vector_labels), 200)}")
        if genre not in clap_labels:
            raise MusicsteerError(f"genre {shown(genre)} is not among the CLAP labels "
                                  f"({one_line(', '.join(clap_labels), 200)})")


def check_protocol(protocol: Protocol) -> None:
    """Every setting against its row, before any work: counts, lengths, seeds, every α of the sweep
    under the steering rule, the sampling, and every prompt the protocol will send (whole, formatted)."""
    from musicsteer.engine.steering import check_alpha  # torch: only once a run is under way

    N.check(protocol.n)
    if protocol.pairs != ALL_PAIRS:  # `all` is checked once the vectors file names the genres (Protocol.resolved)
        check_pairs(protocol.pairs)
    check_fusions(protocol.fusions, protocol.pairs)
    if protocol.hold_seconds:  # 0: no hold study (NaN and negatives are refused by the row)
        HOLD_SECONDS.check(protocol.hold_seconds)
        HOLD_WINDOW.check(protocol.hold_window)
        if protocol.hold_window > protocol.hold_seconds:
            raise OutOfRange(f"--hold-window {protocol.hold_window:g} s is longer than --hold-seconds "
                             f"{protocol.hold_seconds:g} s: give a window no longer than the hold")
    seed = PARAMS["seed"].named("--seed").check(protocol.seed)[0]
    last = protocol.continuation_seed(protocol.n - 1)
    if last > PARAMS["seed"].high:
        raise OutOfRange(f"--seed {shown(seed, 24)} leaves no room for {protocol.n} clips: continuation seeds go up "
                         f"to seed + {CONTINUATION_SEED_OFFSET + protocol.n - 1}, past the most a seed can be "
                         f"(2^63-1)")
    for flag, value in (("--seconds", protocol.seconds), ("--source-seconds", protocol.source_seconds)):
        PARAMS["seconds"].named(flag).check(value)
    rule = PARAMS["steer_rule"].named("--steer-rule").check(protocol.steer_rule)[0]
    PARAMS["alpha"].named("--alpha").check(protocol.alpha)
    check_alpha(protocol.alpha, rule)
    if protocol.alphas:
        ALPHAS.check(tuple(protocol.alphas))
    for alpha in protocol.alphas:
        try:
            check_alpha(alpha, rule)
        except MusicsteerError as err:
            raise type(err)(f"--alphas: {err}") from None
    names: dict[str, float] = {}
    for alpha in protocol.sweep:  # clip names hold α as %g: two strengths must not share one
        if (other := names.setdefault(f"{alpha:g}", alpha)) != alpha:
            raise BadType(f"α {alpha!r} and {other!r} would share the clip name a{alpha:g}: give strengths that "
                          "differ in their first 6 digits (--alpha, --alphas)")
    if protocol.layer is not None:
        PARAMS["layer"].named("--layer").check(protocol.layer)
    if protocol.site:
        PARAMS["site"].named("--site").check(protocol.site)
    if protocol.steer_text not in STEER_TEXT:
        raise BadType(f"--steer-text must be one of {', '.join(STEER_TEXT)}, got {shown(protocol.steer_text)}")
    for name, value in vars(protocol.sampling).items():
        PARAMS[name].named(PARAMS[name].cli or name).check(value)
    for flag, template in (("--source-prompt", protocol.source_prompt), ("--blend-prompt", protocol.blend_prompt)):
        template_fields(flag, template, PROMPT_FIELDS[flag])
    # Formatting is bounded now (templates ≤ the row's size, no format specs, genres ≤ NAME_CHARS): every
    # text the clips will use, held to the prompt row, so an over-long result fails here, not mid-run.
    for source, target in (() if protocol.pairs == ALL_PAIRS else protocol.pairs):
        PROMPT.named(f"the source prompt of {source}").check(protocol.source_text(source))
        PROMPT.named(f"the blend prompt of {source}:{target}").check(protocol.blend_text(source, target))


def slug(text: str) -> str:
    """A file-name-safe form of a genre name ("hip hop" -> "hip-hop")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def pair_name(source: str, target: str) -> str:
    return f"{source}:{target}"
