"""The state a window slide leaves behind: all a take that starts after it needs to be regenerated.

An endless session re-prefills its last `keep` frames at every window slide (engine/generator.py).
From then on its codes depend on nothing older than: the codes it re-prefilled (per codebook, the
frames known to the delay pattern), the controls as they stood (values, and any glide under way),
the sampler's random state, and the session's clocks (token step, the window's first frame). A
`Checkpoint` holds exactly that, captured on the generation thread at the slide (after the changes
due at that token were applied, before its decode). A take whose first frame was made after a slide
logs that slide's checkpoint and only the changes since it (engine/takes.py), so a take's log and a
session's memory are bounded by one window, whatever the session's length; `render --replay`
resumes from it (`resume`, `continue_from`) and makes the same codes as the live stream.

On disk (the `resume` field of a take log's header, format 3: engine/session_log.py):
`{"session_step", "session_frame", "codes": [[code, ...] per codebook], "controls": {status key:
value}, "glides": {param: {"start_step", "steps", "start", "end"}}, "rng": {"device", "state"}}`,
positions counted in the session (tokens, and frames including an audio prompt's), the random
state as base64 of torch.Generator.get_state().
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import Malformed, MusicsteerError, shown

if TYPE_CHECKING:
    from .generator import Frame, Generator

MAX_RNG_BYTES = 1 << 16  # a CPU generator's state is 5056 bytes, a CUDA one's 16


@dataclass(frozen=True)
class Checkpoint:
    """The generator's state at a window slide (B = 1: a live session).

    step: the token clock at the slide (changes applied at it are in `controls`); frame_offset: the
    session frame of the new window's frame 0; codes: per codebook the known frames (n_k,) long,
    on the CPU; controls: the Controls fields after that token's changes; glides: under way then,
    {param: (start_step, steps, start, end)}; rng: (device type, torch.Generator state bytes)."""

    step: int
    frame_offset: int
    codes: tuple[Tensor, ...]
    controls: dict[str, Any]
    glides: dict[str, tuple[int, int, Any, Any]]
    rng: tuple[str, bytes]

    @property
    def first_frame(self) -> int:
        """The first session frame made after the slide: a take from here on depends on nothing older."""
        return self.frame_offset + min(int(c.shape[0]) for c in self.codes)

    def record(self) -> dict[str, Any]:
        """The JSON form (the log's writer thread calls this: the generation thread never serialises)."""
        return {"session_step": self.step, "session_frame": self.frame_offset,
                "codes": [c.tolist() for c in self.codes],
                "controls": {k: list(v) if isinstance(v, tuple) else v for k, v in self.controls.items()},
                "glides": {p: dict(zip(("start_step", "steps", "start", "end"), g, strict=True))
                           for p, g in self.glides.items()},
                "rng": {"device": self.rng[0], "state": base64.b64encode(self.rng[1]).decode("ascii")}}

    @classmethod
    def from_record(cls, record: Any, check_controls: Callable[[Any], dict[str, Any]],
                    check_value: Callable[[str, Any], Any], max_count: int) -> Checkpoint:
        """Read the JSON form; Malformed (one line) if any field is not what `record()` writes.
        check_controls/check_value: the log's own checks of a controls mapping and of one value."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise Malformed(f"the resume state's {what}")

        def count(value: Any, what: str, low: int = 0) -> int:
            need(isinstance(value, int) and not isinstance(value, bool) and low <= value <= max_count,
                 f"{what} must be a whole number from {low} to {max_count}, got {shown(value, 24)}")
            return value

        need(isinstance(record, dict), "must be a mapping")
        codes = record.get("codes")
        need(isinstance(codes, list) and 0 < len(codes) <= 64, "codes must be a list per codebook")
        for row in codes:
            need(isinstance(row, list) and 0 < len(row) <= max_count
                 and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 16 for c in row),
                 "codes must be lists of codes (whole numbers from 0 to 65535)")
        glides = record.get("glides", {})
        need(isinstance(glides, dict), "glides must be a mapping")
        checked_glides = {}
        for param, glide in glides.items():
            need(param in ("alpha", "mix") and isinstance(glide, dict), f"glides name {shown(param, 20)}")
            checked_glides[param] = (count(glide.get("start_step"), "glide's start_step"),
                                     count(glide.get("steps"), "glide's steps", low=1),
                                     check_value(param, glide.get("start")), check_value(param, glide.get("end")))
        rng = record.get("rng")
        need(isinstance(rng, dict) and rng.get("device") in ("cpu", "cuda", "mps", "xpu")
             and isinstance(rng.get("state"), str) and len(rng["state"]) <= MAX_RNG_BYTES * 2,
             "rng needs a device and a state")
        try:
            state = base64.b64decode(rng["state"], validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("the resume state's rng state is not base64") from None
        return cls(step=count(record.get("session_step"), "session_step"),
                   frame_offset=count(record.get("session_frame"), "session_frame"),
                   codes=tuple(torch.tensor(row, dtype=torch.long) for row in codes),
                   controls=check_controls(record.get("controls")), glides=checked_glides, rng=(rng["device"], state))


def capture(gen: Generator, tail: list[Tensor]) -> Checkpoint:
    """The checkpoint of stream 0 at the slide that re-prefilled `tail` (per codebook (B, n_k))."""
    values, glides = gen.control.snapshot()
    state = gen.rng.get_state()
    return Checkpoint(step=gen.step_index, frame_offset=gen.frame_offset,
                      codes=tuple(t[0].to("cpu", copy=True) for t in tail),
                      controls=values, glides=glides, rng=(gen.lm.device.type, state.numpy().tobytes()))


def resume(gen: Generator, point: Checkpoint) -> bool:
    """Put a fresh one-stream generator (made with the session's settings) where the live one stood
    after the slide: instead of `gen.start()`. False when the random state is another device's
    (it is then seeded from the controls: sampled codes differ; greedy ones do not). MusicsteerError
    if the codes do not fit this model's window (another keep, another codebook count)."""
    if gen.batch != 1:
        raise MusicsteerError("a take resumes one stream")
    expected = [gen.keep + gen.delay.max_delay - d for d in gen.delay.delays]
    if [int(c.shape[0]) for c in point.codes] != expected:
        raise MusicsteerError(f"the log's window codes ({len(point.codes)} codebooks) do not fit this model and "
                              f"window ({len(expected)} codebooks, {gen.keep} frames kept)")
    if max(int(c.max()) for c in point.codes) >= gen.lm.codebook_size:
        raise MusicsteerError(f"the log's window codes exceed this model's {gen.lm.codebook_size} codes")
    gen.control.restore(point.controls, point.glides)
    same = point.rng[0] == gen.lm.device.type
    try:
        if same:
            gen.rng.set_state(torch.frombuffer(bytearray(point.rng[1]), dtype=torch.uint8))
    except RuntimeError:  # not this build's state size
        same = False
    if not same:
        gen.rng.manual_seed(gen.control.values.seed)
    gen.steering.set_terms(gen.control.terms())
    gen._set_prompt()
    gen.step_index, gen.frame_offset = point.step, point.frame_offset
    gen._begin_window([c[None] for c in point.codes])
    return same


def continue_from(gen: Generator, point: Checkpoint, total_frames: int, pad_end: bool,
                  on_frame: Callable[[Frame], None] | None = None) -> Tensor:
    """A generator just `resume`d at `point`: run to session frame `total_frames`; codes (K,
    total_frames - point.frame_offset), from the window's first (re-prefilled) frame on."""
    if pad_end:
        gen.set_end(total_frames)
    known = min(int(c.shape[0]) for c in point.codes)
    frames = list(torch.stack([c[:known] for c in point.codes]).unbind(-1))
    while point.frame_offset + len(frames) < total_frames:
        frame = gen.step()
        if frame is not None:
            frames.append(frame.codes[0])
            if on_frame is not None:
                on_frame(frame)
    return torch.stack(frames, dim=-1)
