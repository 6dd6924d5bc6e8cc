"""The parameter table: every value a performer or researcher sets, defined once (docs/design.md §3).

One `Param` row per control gives its type, unit, range, default, whether it glides, and how it
appears on every path in and out: the CLI flag, the YAML key (`defaults:` of a config, a line of an
automation file), the OSC address, whether a MIDI knob may move it, its status key, the span a fader
or default MIDI knob travels, and, for a live row, its `effect`: what it acts on (the sampler, the
steering, the prompt, the seed). `Controls`, validation, the CLI options, config defaults, automation
keys, OSC dispatch and replies, the page's faders, the default MIDI ranges, the control state's
dispatch, the sampler's settings (`sampling.Sampler`: one field per "sampler" row), the status and
README's table of knobs are all derived from `PARAMS`. A sampler knob is one row plus its arithmetic
in engine/sampling.py (and its 0-d buffer in engine/graph.py); any other live knob, one row plus what
its effect does.

`Param.check` is the one validator. Where a value enters at start-up (CLI, config, automation file,
replayed log) it runs with `live=False`: out of range is an error (one line, exit 2), never a silent
clamp. While the music plays (OSC, MIDI, web) it runs with `live=True`: out of range is clamped and
reported, anything else invalid is refused and reported. Derived quantities are bounded by their
inputs' ranges: a glide is at most `GLIDE.high` seconds, so seconds -> steps can never overflow.

This module imports nothing heavy (no torch): the CLI builds its options from it in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import BadType, NonFinite, OutOfRange, TooLarge, one_line, shown

SITES = ("residual", "attention")  # residual: the stream entering layer L; attention: layer L's self-attention output
RULES = ("renorm", "add")  # renorm: (h + a|h|v)/(1+a), the paper's; add: h + a v
WHEN_SLOW = ("rebuffer", "play")
AUTO_BUFFER_MAX = 2.0  # seconds: the most --buffer auto lets generation run ahead (a slow machine's ceiling)
DECODE = ("auto", "graph", "eager")
QUANTIZE = ("int8", "int8-tensor")
# What a live row acts on, read by the control state's dispatch (engine/control.py) and the sampler
# (engine/sampling.py): the sampler's settings, the steering terms, the text prompt, the random stream.
EFFECTS = ("sampler", "steering", "prompt", "seed")
NAME_CHARS = 64  # a vector name, a preset name


@dataclass(frozen=True)
class Param:
    """One row of the table. `low`/`high` bound numbers (mix: each weight); `size` bounds text
    (characters) and mixes (entries). Paths: `cli` flag, `keys` in YAML files (the first is the
    name a config's `defaults:` and automation use; more are spellings such as `steer`), `glide`
    (the key that glides, the key of its time), `osc` addresses under /musicsteer/ (the first takes any
    value of the row: surfaces are told the value there, two-way OSC), `midi`, `status`."""

    name: str
    kind: str  # number | whole | choice | text | mix
    help: str
    unit: str = ""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # the low end itself is excluded (seconds > 0)
    default: Any = None
    choices: tuple[str, ...] = ()
    size: int = 0
    live: bool = False  # a change the running session takes at a token boundary
    cli: str | None = None
    many: bool = False  # the CLI and config take a comma list / YAML list (layers)
    keys: tuple[str, ...] = ()
    glide: tuple[str, str] | None = None
    osc: tuple[str, ...] = ()
    osc_types: str = ""
    midi: bool = False
    status: str | None = None
    words: tuple[str, ...] = ()  # words a number row also takes (buffer: "auto")
    span: tuple[float, float] | None = None  # what a fader spans on a surface (the page, default MIDI knobs)
    curve: str = "linear"  # how a default MIDI knob travels the span (controllers/mappings.py CURVES; exp: by ratios)
    effect: str | None = None  # a live row: what it acts on (EFFECTS)

    @property
    def dest(self) -> str:
        """The argparse destination of the CLI flag."""
        return (self.cli or self.name).lstrip("-").replace("-", "_")

    def check(self, value: Any, live: bool = False) -> tuple[Any, bool]:
        """(the value in its engine type, whether it was clamped). Raises a typed MusicsteerError.

        live=False (start-up): out of range raises OutOfRange. live=True: out of range is clamped.
        Types are never coerced from text here: `parse` reads text (CLI, YAML strings)."""
        if self.many and isinstance(value, list | tuple):
            if not value or len(value) > max(self.size, 1):
                raise TooLarge(f"{self.name} takes 1 to {self.size} values, got {len(value)}")
            checked = [self._one(v, live) for v in value]
            values = tuple(v for v, _ in checked)
            if len(set(values)) != len(values):
                raise BadType(f"{self.name} lists a value twice: {shown(values)}")
            return values, any(c for _, c in checked)
        return self._one(value, live)

    def _one(self, value: Any, live: bool) -> tuple[Any, bool]:
        if isinstance(value, str) and value in self.words:
            return value, False
        if self.kind in ("number", "whole"):
            return _bounded(self.name, value, self.low, self.high, self.kind == "whole", live, self.low_open)
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise BadType(f"{self.name} must be one of {', '.join(self.choices)}, got {shown(value)}")
            return value, False
        if self.kind == "text":
            return check_text(self.name, value, self.size), False
        return self._mix(value, live)

    def _mix(self, value: Any, live: bool) -> tuple[dict[str, float], bool]:
        if isinstance(value, str):
            value = {value: 1.0}
        if not isinstance(value, dict) or not value:
            raise BadType(f"a mix needs at least one vector name with a weight, got {shown(value)}")
        if len(value) > self.size:
            raise TooLarge(f"a mix takes at most {self.size} vectors, got {len(value)}")
        mix, clamped = {}, False
        for name, weight in value.items():
            name = check_text("a vector name", name, NAME_CHARS, empty=False)
            mix[name], was = _bounded(f"the weight of {name}", weight, self.low, self.high, False, live)
            clamped |= was
        if all(w == 0 for w in mix.values()):
            raise OutOfRange("a mix needs at least one non-zero weight")
        return mix, clamped

    def named(self, name: str) -> Param:
        """This row under another name, for messages about a key or flag spelled otherwise."""
        return self if name == self.name else dataclasses.replace(self, name=name)

    def parse(self, text: Any) -> Any:
        """Read a value written as text or YAML (CLI flag, config, automation) and check it strictly.
        Numbers may be text (YAML 1.1 reads `1e3` as a string); a mix may be `NAME` or `A=0.5,B=0.5`;
        a `many` value may be `17,19` or a YAML list."""
        if self.many and isinstance(text, str) and "," in text:
            text = [part.strip() for part in text.split(",") if part.strip()]
        if self.many:  # always a tuple, one value or several
            parts = text if isinstance(text, list | tuple) else [text]
            return self.check(tuple(self._read(part) for part in parts))[0]
        return self.check(self._read(text))[0]

    def _read(self, text: Any) -> Any:
        if self.kind == "mix" and isinstance(text, dict):  # YAML 1.1 reads a weight `1e-1` as text
            return {name: number_text(f"the weight of {one_line(name, 40)}", w) if isinstance(w, str) else w
                    for name, w in text.items()}
        if not isinstance(text, str) or text in self.words:
            return text
        if self.kind in ("number", "whole"):
            try:
                return number_text(self.name, text, self.kind == "whole")
            except BadType as err:
                if not self.words:
                    raise
                raise BadType(f"{err} (or {' or '.join(self.words)})") from None
        if self.kind == "mix":
            return _mix_text(text, self.size)
        return text

    def describe_range(self, unit: str = "") -> str:
        """The range as README and --help print it, numbers followed by `unit`."""
        if self.kind == "choice":
            return " | ".join(self.choices)
        if self.kind == "text":
            return f"≤ {self.size} characters"
        if self.kind == "mix":
            return f"≤ {self.size} names, weights {_g(self.low)}..{_g(self.high)}"
        low = ("> " if self.low_open else "") + _g(self.low)
        numbers = f"{low}..{_g(self.high)}" if not self.low_open else f"{low}, ≤ {_g(self.high)}"
        return " or ".join((numbers + unit, *self.words))


def _g(x: float) -> str:
    return "2^63-1" if x == 2**63 - 1 else f"{x:g}"


def check_text(what: str, value: Any, limit: int, empty: bool = True) -> str:
    """Text of at most `limit` characters, valid Unicode (UTF-8 encodable: no lone surrogate, which JSON's
    `\\ud800` and a byte that is not UTF-8 in argv (decoded with surrogateescape) both give), with no
    control characters but tab and newline. The one rule for text wherever it enters; raises
    `BadType`/`TooLarge` (MusicsteerError)."""
    if not isinstance(value, str):
        raise BadType(f"{what} needs text, got {type(value).__name__} {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadType(f"{what} is not valid Unicode text (character {error.start + 1} is a lone surrogate, "
                      f"e.g. a byte that is not UTF-8): {shown(value)}") from None
    if len(value) > limit:
        raise TooLarge(f"{what} is {len(value)} characters long; the most is {limit}")
    if not empty and not value:
        raise BadType(f"{what} must not be empty")
    if any(ord(ch) < 32 and ch not in "\t\n" or ord(ch) == 127 for ch in value):
        raise BadType(f"{what} holds a control character: {shown(value)}")
    return value


def _bounded(what: str, value: Any, low: float, high: float, whole: bool, live: bool,
             low_open: bool = False) -> tuple[Any, bool]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadType(f"{what} needs {'a whole number' if whole else 'a number'}, got "
                      f"{type(value).__name__} {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise NonFinite(f"{what} must be finite, got {value}")
    if whole and isinstance(value, float) and not value.is_integer():
        raise BadType(f"{what} needs a whole number, got {shown(value)}")
    inside = (low < value if low_open else low <= value) and value <= high
    if not inside and not live:
        rng = f"{'above' if low_open else 'at least'} {_g(low)} and at most {_g(high)}"
        raise OutOfRange(f"{what} must be {rng}, got {shown(value, 24)}")
    if not inside and low_open and value <= low:
        raise OutOfRange(f"{what} must be above {_g(low)}, got {shown(value, 24)}")  # no value to clamp to
    clamped = min(max(value, low), high)  # exact for big ints: Python compares int and float exactly
    out = int(clamped) if whole else float(clamped)
    return out, not inside


def number_text(what: str, text: str, whole: bool = False) -> float | int:
    try:  # float() also reads 1_0 and other scripts' digits (٣): a typo must not become a number
        if not text.isascii() or "_" in text:
            raise ValueError(text)
        number = float(text)
    except ValueError:
        raise BadType(f"{what} needs {'a whole number' if whole else 'a number'}, got {shown(text)}") from None
    if not math.isfinite(number):
        raise NonFinite(f"{what} must be finite, got {shown(text)}")
    stripped = text.strip()
    if number.is_integer() and stripped.lstrip("+-").isdigit():
        return int(stripped)  # keeps big whole numbers (seeds) exact
    return number


def _mix_text(text: str, size: int) -> dict[str, Any]:
    """`NAME` or `NAME=W,NAME=W` -> {name: weight} (weights still to be checked)."""
    mix: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if len(mix) >= size:
            raise TooLarge(f"a mix takes at most {size} vectors")
        name, eq, weight = part.partition("=")
        if name.strip() in mix:
            raise BadType(f"a mix names {one_line(name.strip(), 40)} twice")
        mix[name.strip()] = number_text(f"the weight of {one_line(name.strip(), 40)}", weight) if eq else 1.0
    return mix


# The glide time of alpha (ramp) and of the mix (morph), on every path, and the automation clock.
GLIDE = Param("glide", "number", "glide time of an alpha ramp or a vector-mix morph", "s", 0, 3600)
AT = Param("at", "number", "when an automation event applies, from the start of generation", "s", 0, 86400)

# Controls: the values a running session takes at token boundaries (`Controls` has one field each).
CONTROLS = (
    Param("prompt", "text", "text prompt ('' = none)", size=500, default="", live=True, cli="--prompt",
           keys=("prompt",), osc=("prompt",), osc_types="s", status="prompt", effect="prompt"),
    Param("seed", "whole", "sampling seed: the same seed and flags give the same codes", low=0, high=2**63 - 1,
           default=0, live=True, cli="--seed", keys=("seed",), osc=("seed",), osc_types="i", midi=True,
           status="seed", effect="seed"),
    Param("guidance", "number", "classifier-free guidance scale", "×", 0, 30, default=3.0, live=True,
           cli="--guidance", keys=("guidance",), osc=("guidance",), osc_types="f", midi=True, status="guidance",
           span=(1, 8), curve="exp", effect="sampler"),
    Param("temperature", "number", "sampling temperature (0 = greedy)", "", 0, 10, default=1.0, live=True,
           cli="--temperature", keys=("temperature",), osc=("temperature",), osc_types="f", midi=True,
           status="temperature", span=(0.5, 2), curve="exp", effect="sampler"),
    Param("top_k", "whole", "candidates per draw (1 = greedy, 0 = all)", "tokens", 0, 2048, default=250,
           live=True, cli="--top-k", keys=("top_k",), osc=("topk",), osc_types="i", midi=True, status="top_k",
           span=(10, 500), curve="exp", effect="sampler"),
    Param("top_p", "number", "nucleus sampling mass (0 = off)", "", 0, 1, default=0.0, live=True, cli="--top-p",
           keys=("top_p",), osc=("topp",), osc_types="f", midi=True, status="top_p", span=(0, 1), effect="sampler"),
    Param("min_p", "number", "min-p: keep the tokens at least this fraction as likely as the most likely one "
           "(after temperature, top-k and top-p; 0 = off)", "", 0, 1, default=0.0, live=True, cli="--min-p",
           keys=("min_p",), osc=("minp",), osc_types="f", midi=True, status="min_p", span=(0, 0.5),
           effect="sampler"),
    Param("alpha", "number", "steering strength α (with --steer)", "", -10, 10, default=0.5, live=True,
           cli="--alpha", keys=("alpha",), glide=("alpha", "ramp"), osc=("alpha",), osc_types="f [ramp_s]",
           midi=True, status="alpha", span=(0, 1), effect="steering"),
    Param("mix", "mix", "steering vector, or a weighted mix of vectors (genre fusion)", "", -10, 10, size=16,
           default=None, live=True, cli="--steer", keys=("mix", "steer"), glide=("morph", "seconds"),
           osc=("mix", "steer", "morph"), osc_types="s f … [morph_s] | s | s morph_s", status="mix",
           effect="steering"),
    Param("layer", "whole", "steering layer(s) (default: the vectors file's best layer)", "", 0, 1000,
           size=8, default=None, live=True, cli="--layer", many=True, keys=("layer",), osc=("layer",),
           osc_types="i", midi=True, status="layers", effect="steering"),
    Param("site", "choice", "steering site (default: the vectors file's)", choices=SITES, default=None, live=True,
           cli="--site", keys=("site",), osc=("site",), osc_types="s", status="site", effect="steering"),
)

# Settings fixed for a session: bounded at the door like the controls, never changed live.
SETTINGS = (
    Param("seconds", "number", "seconds of new audio (play: default until stopped)", "s", 0, 86400,
           low_open=True, cli="--seconds"),
    Param("buffer", "number", "audio generated ahead of playback, the knob-to-ear delay: auto = the least "
           "that keeps the sound whole at the measured speed (engine/lead.py), found while playing", "s", 0.02, 60,
           default="auto", cli="--buffer", keys=("buffer",), words=("auto",)),
    Param("prebuffer", "number", "audio queued before playback starts (≤ --buffer; auto: the lead, if less)",
           "s", 0.02, 60, default=0.5, cli="--prebuffer", keys=("prebuffer",)),
    Param("blocksize", "whole", "audio callback block: auto = the device's own period where PortAudio reports one "
          "(a JACK server's), else the smallest that plays whole (engine/audio_out.py)", "frames", 16, 16384,
          default="auto", cli="--blocksize", words=("auto",)),
    Param("slew", "number", "an alpha jump glides over this time (no clicks); a ramp's own time wins", "s", 0, 10,
           default=0.05, cli="--slew"),
    Param("init_seconds", "number", "seconds of --init-audio to continue from (its end)", "s", 0, 30,
           low_open=True, default=10.0, cli="--init-seconds"),
    Param("window_seconds", "number", "context window: MusicGen's trained 30 s; past it the last keep_seconds are "
          "re-prefilled", "s", 1, 300, default=30.0),
    Param("keep_seconds", "number", "context carried into the next window (audiocraft keeps 12 s of 30 s)", "s",
          0, 300, low_open=True, default=12.0),
    Param("steer_rule", "choice", "renorm: (h + α‖h‖v)/(1+α), the paper's; add: h + αv", choices=RULES,
           default="renorm", cli="--steer-rule"),
    Param("when_slow", "choice", "generation slower than real time: pause until the prebuffer (auto: the "
           "lead, if less) refills (rebuffer) or play on with gaps (play)", choices=WHEN_SLOW, default="rebuffer",
           cli="--when-slow"),
    Param("decode", "choice", "the token step: graph = one captured CUDA graph per token (on a CPU, which has "
           "no graphs: the same static-buffer step, uncaptured); auto = graph on CUDA, eager on the CPU",
           choices=DECODE, default="auto", cli="--decode"),
    Param("quantize", "choice", "CPU only, float32: int8 dynamic quantisation of the decoder's Linear layers "
           "(per-channel scales, or one per matrix)", choices=QUANTIZE, cli="--quantize"),
    Param("threads", "whole", "CPU threads for torch (default: 1 for tiny models, torch's choice otherwise)", "",
           1, 1024, cli="--threads"),
    Param("meter_every", "whole", "tokens per genre-meter reading (25 = 0.5 s)", "tokens", 1, 3000, default=25,
           cli="--meter-every"),
    Param("meter_layer", "whole", "layer the genre meter reads (default: the vectors file's best layer)", "",
           0, 1000, cli="--meter-layer"),
    Param("ease_at", "number", "ease α off while the target genre's meter score holds above this", "cosine",
           -1, 1, cli="--ease-at"),
    Param("osc_port", "whole", "OSC port (0 = any free port)", "", 0, 65535, default=9000, cli="--osc-port"),
    Param("status_interval", "number", "seconds between status messages to OSC subscribers (config osc:)", "s",
          0.05, 3600, default=1.0),
)

PARAMS: dict[str, Param] = {p.name: p for p in (*CONTROLS, *SETTINGS)}
LIVE: dict[str, Param] = {p.name: p for p in CONTROLS}
SAMPLER: dict[str, Param] = {p.name: p for p in CONTROLS if p.effect == "sampler"}  # the sampler's settings
OSC_ADDRESSES: dict[str, Param] = {address: p for p in CONTROLS for address in p.osc}
YAML_KEYS: dict[str, Param] = {key: p for p in PARAMS.values() for key in p.keys}


def check_settings(**values: Any) -> None:
    """Check session settings given by name (`window_seconds=30.0`, …) against their rows, strictly;
    None means "not set". For library callers, who bypass the CLI's typed flags."""
    for name, value in values.items():
        if value is not None:
            PARAMS[name].check(value)


def check_stream(buffer: float | str, prebuffer: float, blocksize: int | str, sample_rate: int = 32000) -> None:
    """The stream settings together: the prebuffer fits in the buffer and holds at least one audio
    block (else the first callback underruns whatever the speed). Rates: MusicGen's 32 kHz by default.
    A buffer of "auto" holds at most AUTO_BUFFER_MAX seconds, and starts (and refills) at its lead
    rather than the prebuffer, when that is less (engine/lead.py)."""
    most = AUTO_BUFFER_MAX if buffer == "auto" else buffer
    if prebuffer > most:
        what = f"the most --buffer auto queues ({most:g} s)" if buffer == "auto" else f"the buffer ({most:g} s)"
        raise OutOfRange(f"the prebuffer ({prebuffer:g} s) cannot be longer than {what}: see "
                         "--prebuffer, --buffer and a config's defaults")
    # auto refills to its lead: two blocks at least; a block of "auto" is checked once the device gives it
    if buffer != "auto" and blocksize != "auto" and prebuffer * sample_rate < blocksize:
        raise OutOfRange(f"the prebuffer ({prebuffer:g} s) must hold at least one audio block ({blocksize} "
                         f"frames = {blocksize / sample_rate:g} s at {sample_rate} Hz): raise --prebuffer or lower "
                         "--blocksize")


def glide_steps(seconds: float, steps_per_second: float) -> int:
    """Token steps of a glide of `seconds` (≤ GLIDE.high, so finite and small): at least 1."""
    return max(1, round(min(seconds, GLIDE.high) * steps_per_second))


def markdown_table() -> str:
    """README's table of knobs, generated from the table (tests/test_params.py checks README holds it)."""
    def row_of(*cells: str) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    def default(p: Param) -> str:
        return "—" if p.default is None else f"`{p.default!r}`" if isinstance(p.default, str) else f"{p.default:g}"

    def unit(p: Param) -> str:
        return f" {p.unit}" if p.unit and p.kind not in ("text", "choice") else ""

    rows = ["| knob | CLI flag | YAML key | OSC address (types) | MIDI | range | default | meaning |",
            "|---|---|---|---|---|---|---|---|"]
    for p in CONTROLS:
        keys = ", ".join(f"`{k}`" for k in p.keys) + (f" (`{p.glide[0]}` + `{p.glide[1]}`)" if p.glide else "")
        osc = ", ".join(f"`/musicsteer/{a}`" for a in p.osc) + f" `{p.osc_types}`"
        rows.append(row_of(p.name, f"`{p.cli}`", keys, osc, "yes" if p.midi else "—",
                           p.describe_range(unit(p)), default(p), p.help))
    rows += ["", "| setting | CLI flag | YAML key | range | default | meaning |", "|---|---|---|---|---|---|"]
    for p in (*SETTINGS, GLIDE, AT):
        keys = ", ".join(f"`{k}`" for k in p.keys) or {"glide": "`ramp`, `seconds`", "at": "`at`"}.get(p.name, "—")
        rows.append(row_of(p.name, f"`{p.cli}`" if p.cli else "—", keys, p.describe_range(unit(p)), default(p),
                           p.help))
    return "\n".join(rows)


__all__ = ["AT", "CONTROLS", "EFFECTS", "GLIDE", "LIVE", "PARAMS", "RULES", "SAMPLER", "SETTINGS", "SITES",
           "Param", "check_settings",
           "check_stream", "check_text", "glide_steps", "markdown_table"]
