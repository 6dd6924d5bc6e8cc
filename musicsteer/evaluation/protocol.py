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

A clip's WAV holds the whole transition (source then continuation, decoded in one pass so the
seam is the codec's own); CLAP scores only the continuation (see clap.py).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.params import PARAMS

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("rock", "classical"), ("classical", "electronic"), ("electronic", "jazz"), ("jazz", "rock"),
)
SOURCE_PROMPT = "a {source} music piece"
BLEND_PROMPT = "{source} music transitioning into {target}"
CONTINUATION_SEED_OFFSET = 10_000  # keeps continuation seeds apart from source seeds
STEER_TEXT = ("source", "none")


@dataclass(frozen=True)
class Sampling:
    guidance: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0


@dataclass(frozen=True)
class Protocol:
    """Everything that decides which clips exist and what their codes are."""

    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    n: int = 20
    seed: int = 0
    source_seconds: float = 10.0
    seconds: float = 10.0
    alpha: float = 0.5
    alphas: tuple[float, ...] = ()
    layer: int | None = None  # None: the vectors file's best_layer
    site: str = ""  # "": the vectors file's site
    steer_rule: str = "renorm"
    steer_text: str = "source"
    source_prompt: str = SOURCE_PROMPT
    blend_prompt: str = BLEND_PROMPT
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def genres(self) -> list[str]:
        return list(dict.fromkeys(g for pair in self.pairs for g in pair))

    @property
    def sweep(self) -> list[float]:
        """Every α that gets steered clips: the main α plus the sweep, ascending."""
        return sorted({self.alpha, *self.alphas})

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
        data["pairs"] = [f"{a}:{b}" for a, b in self.pairs]
        return data


def parse_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """"rock:classical,jazz:rock" -> (("rock", "classical"), ("jazz", "rock")); None: the paper's four."""
    if text is None:
        return DEFAULT_PAIRS
    pairs = []
    for part in text.split(","):
        source, sep, target = part.strip().partition(":")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            raise MusicsteerError(f"--pairs needs SOURCE:TARGET[,SOURCE:TARGET...], got {part.strip()!r}")
        if source == target:
            raise MusicsteerError(f"--pairs: {source}:{target} is no transition (source equals target)")
        pairs.append((source, target))
    if len(set(pairs)) != len(pairs):
        raise MusicsteerError(f"--pairs lists a transition twice: {text}")
    return tuple(pairs)


def parse_alphas(text: str | None) -> tuple[float, ...]:
    """`0.2,0.4,0.6` -> strengths, each held to the alpha row of the parameter table."""
    try:
        return tuple(PARAMS["alpha"].parse(part.strip()) for part in (text or "").split(",") if part.strip())
    except MusicsteerError as err:
        raise type(err)(f"--alphas: {err}") from None


def parse_labels(text: str | None) -> list[str]:
    return [label.strip() for label in (text or "").split(",") if label.strip()]


def check_genres(protocol: Protocol, vector_labels: list[str], clap_labels: list[str]) -> None:
    """Every genre of every pair needs a steering vector (the target is steered toward; the source
    must be a known genre too) and a CLAP label (the target is scored)."""
    for genre in protocol.genres:
        if genre not in vector_labels:
            raise MusicsteerError(f"unknown genre {genre!r}: the vectors file has {', '.join(vector_labels)}")
        if genre not in clap_labels:
            raise MusicsteerError(f"genre {genre!r} is not among the CLAP labels ({', '.join(clap_labels)})")


def check_numbers(protocol: Protocol) -> None:
    if protocol.n < 1:
        raise MusicsteerError(f"--n must be >= 1, got {protocol.n}")
    for flag, value in (("--seconds", protocol.seconds), ("--source-seconds", protocol.source_seconds)):
        if not value > 0:
            raise MusicsteerError(f"{flag} must be > 0, got {value}")
    if protocol.steer_text not in STEER_TEXT:
        raise MusicsteerError(f"--steer-text must be one of {', '.join(STEER_TEXT)}")
    for template, names in ((protocol.source_prompt, ("source",)), (protocol.blend_prompt, ("source", "target"))):
        try:
            template.format(**dict.fromkeys(names, "x"))
        except (KeyError, IndexError, ValueError) as e:
            raise MusicsteerError(f"prompt template {template!r} may only use {{source}} and {{target}}: {e}") from None


def slug(text: str) -> str:
    """A file-name-safe form of a genre name ("hip hop" -> "hip-hop")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def pair_name(source: str, target: str) -> str:
    return f"{source}:{target}"
