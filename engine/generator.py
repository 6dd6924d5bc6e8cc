"""One generation session: the token-by-token loop over a preallocated cache.

Each `step()` is one token boundary: apply the control changes due now, run the decoder on the
pending input (the prefill of a window, or the last sampled token), mix the CFG halves, sample,
place the tokens in the delay pattern, and return the frame this step completed, if any.

Sessions are endless: when the window (the model's trained 30 s by default) is full, the last
`keep` frames are re-prefilled at positions from 0 (audiocraft's extension keeps 12 s of 30 s),
and generation continues from exactly where it was.

A Generator decodes B streams at once (one `Controls` per stream; B = 1 is a live session). The
CFG batch is laid out [conditional rows 0..B-1, unconditional rows 0..B-1]: halves, as B = 1 was
(conditional first), so the CFG mix is one `chunk(2)` and the steering table marks the first B
rows. Each stream has its own control state (prompt, seed, steering terms and their changes),
its own torch.Generator (so stream b draws exactly what a lone session seeded like it draws) and
its own codes; the sampler's settings (`sampling.Sampler`: the table's "sampler" rows) are the
batch's, equal in every stream. Greedy or seeded, stream b's codes equal a B = 1 session's with b's controls
(tests/test_batch.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import checkpoint
from . import decoder as decoder_fn
from .control import Boundary, Controls, ControlState
from .decoder import FastDecoder
from .delay import DelayPattern
from .errors import BadType, MusicsteerError, shown
from .events import Applied, Listeners, Notice
from .kv_cache import KVCache
from .params import PARAMS, SAMPLER, check_settings
from .prompts import PromptEncoder
from .sampling import guided_logits, sample_tokens, sampler_of
from .steering import SteeringTensors
from .vectors import SteeringVectors

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .loading import LoadedModel
    from .meter import GenreMeter

DEFAULT_WINDOW_SECONDS = PARAMS["window_seconds"].default  # MusicGen's training length
DEFAULT_KEEP_SECONDS = PARAMS["keep_seconds"].default  # context carried into the next window (audiocraft's)
DEFAULT_SLEW = PARAMS["slew"].default  # an alpha jump glides over this time


class Frame:
    """One completed frame: `index` (frame number in the session, 50 per second) and `codes`
    (B, K) long on the CPU.

    On CUDA the codes travel to pinned host memory with a non-blocking copy and an event, so the
    generation loop queues the next token without waiting for this one; reading `codes` waits for
    the copy (normally long finished by then). This fetch is the loop's only host sync per token."""

    __slots__ = ("index", "_codes", "_ready")

    def __init__(self, index: int, codes: Tensor, ready: torch.cuda.Event | None = None) -> None:
        self.index, self._codes, self._ready = index, codes, ready

    @property
    def codes(self) -> Tensor:
        ready = self._ready  # read once: two threads may ask at the same time
        if ready is not None:
            ready.synchronize()
            # Into ordinary memory: page-locked blocks are for transfers, not for a session's
            # worth of kept frames; the pinned block goes back to torch's cache for the next fetch.
            self._codes = self._codes.clone()  # clone allocates ordinary (pageable) memory
            self._ready = None
        return self._codes

    @classmethod
    def fetch(cls, index: int, codes: Tensor) -> Frame:
        """A frame of device `codes`, copied to the host (a copy: on the CPU, `codes` may be a view
        of a buffer that the next window slide overwrites)."""
        if codes.device.type != "cuda":
            return cls(index, codes.to("cpu", copy=True))
        host = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=True)
        host.copy_(codes, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(codes.device))  # the copy's stream, whatever the thread's device
        return cls(index, host, ready)


def fast_decoder(lm: LoadedModel) -> FastDecoder:
    """The FastDecoder of a loaded model, built once (it re-points the model's weights as views)."""
    dec = getattr(lm.model, "_musicsteer_fast_decoder", None)
    if dec is None:
        dec = FastDecoder(lm.model).eval()
        lm.model._musicsteer_fast_decoder = dec
    return dec


class Generator:
    # A captured graph cannot branch on which steering slots hold a term: it computes them all.
    steer_every_slot = False

    def __init__(
        self,
        lm: LoadedModel,
        controls: Controls | Sequence[Controls] | None = None,
        vectors: SteeringVectors | None = None,
        *,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        keep_seconds: float = DEFAULT_KEEP_SECONDS,
        steer_rule: str = "renorm",
        steer_both: bool = False,
        slew: float = DEFAULT_SLEW,
    ) -> None:
        # The table's bounds, whoever calls: a replayed log's header is a start-up path like a flag.
        check_settings(window_seconds=window_seconds, keep_seconds=keep_seconds, steer_rule=steer_rule, slew=slew)
        if not isinstance(steer_both, bool):
            raise BadType(f"steer_both needs true or false, got {shown(steer_both)}")
        if vectors is not None:
            vectors.check_model(lm.num_layers, lm.d_model, lm.name)
        self.lm = lm
        self.dec = fast_decoder(lm)
        self.window = min(round(window_seconds * lm.frame_rate) + 1, lm.max_positions)
        self.keep = round(keep_seconds * lm.frame_rate)
        if not 0 < self.keep < self.window - lm.num_codebooks - 1:
            raise MusicsteerError(f"keep ({keep_seconds} s) must be shorter than the window ({window_seconds} s)")
        streams = [controls or Controls()] if controls is None or isinstance(controls, Controls) else list(controls)
        if not streams:
            raise MusicsteerError("a batch needs at least one stream's controls")
        self.batch = batch = len(streams)
        dec = self.dec
        self.cache = KVCache(dec.num_layers, 2 * batch, dec.num_heads, self.window, dec.head_dim,
                             lm.dtype, lm.device)
        self.steering = SteeringTensors(dec.num_layers, dec.d_model, batch, lm.device, steer_rule, steer_both,
                                        apply_all=self.steer_every_slot)
        # One control state per stream; `control` is stream 0's (the live session's only one).
        self.rows = [ControlState(c, vectors, dec.num_layers, lm.frame_rate, slew, steer_rule)
                     for c in streams]
        self.control = self.rows[0]
        self._check_shared()
        # Prompts are encoded on the prompt thread as they are submitted (engine/prompts.py).
        self.prompts = PromptEncoder(lm, warn=self._warn)
        for control in self.rows:
            control.prepare = self.prompts.request
        # Everything besides the controls that decides the codes: a session log records it for replay.
        self.settings = {"window_seconds": window_seconds, "keep_seconds": keep_seconds, "steer_rule": steer_rule,
                         "steer_both": steer_both, "slew": slew}
        self.vectors = vectors
        self.delay = DelayPattern(lm.num_codebooks, lm.audio_channels, lm.pad_token_id, batch, self.window,
                                  lm.device)
        # One random stream per batch stream; B = 1 draws with its one generator, as it always has.
        self.rngs = [torch.Generator(device=lm.device) for _ in streams]
        self.rng = self.rngs[0]
        self.draw_rng: torch.Generator | list[torch.Generator] = self.rng if batch == 1 else self.rngs
        self.step_index = 0  # tokens generated in this session
        self.frame_offset = 0  # session index of the current window's frame 0
        self.end_frame: int | None = None
        # Told the state each window slide leaves (engine/checkpoint.py), on this thread: a live
        # session's takes resume from it, so that nothing older need be kept (engine/takes.py).
        self.on_slide: Callable[[Checkpoint], None] | None = None
        self.capture: dict[str, Tensor] | None = None  # set to a dict to read activations (tests, probes)
        self.meter: GenreMeter | None = None  # a live genre meter reading the same activations
        self.last_logits: Tensor | None = None  # raw (2B, K, V) logits of the last step
        # Applied changes and meter readings, on this thread: the session log, OSC, tests listen here.
        self.listeners = Listeners()
        self._inputs: tuple[Tensor, Tensor] | None = None
        self._position = 0
        # The next single-token input, both CFG halves: written in place each step (no allocation).
        self._step_tokens = torch.empty(2 * batch, lm.num_codebooks, 1, dtype=torch.long, device=lm.device)
        self._step_halves = self._step_tokens.view(2, batch, lm.num_codebooks)
        self._positions = torch.arange(self.window, device=lm.device)
        # One 1-element view per position, made once: slicing a tensor every token is an op.
        self._position_views = self._positions.split(1)

    # -- session control (changes: `self.control.submit`, from any thread) ----------------------
    def start(self, prompt_codes: Tensor | None = None) -> None:
        """Begin the session: encode the text prompts, and prefill the audio prompt codes (B, K, F),
        one per stream, or (1, K, F) continued by every stream, if any."""
        for row, control in enumerate(self.rows):
            self.rngs[row].manual_seed(control.values.seed)
            self.steering.set_terms(control.terms(), row=row)
        self._set_prompt()
        if prompt_codes is not None:
            prompt_codes = prompt_codes.expand(self.batch, -1, -1)
            # A prompt longer than the window keeps its end (the part the continuation follows).
            prompt_codes = prompt_codes[..., -(self.window - self.delay.max_delay - 2):]
        self._begin_window(prompt_codes)

    def set_end(self, total_frames: int) -> None:
        """Finish after `total_frames` session frames, padding the last delayed codebooks as
        transformers' generate does (so a finite render is exactly generate's)."""
        self.end_frame = total_frames
        self.delay.end_frame = total_frames - self.frame_offset

    # -- the loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> Frame | None:
        """Generate one token for every codebook; return the frame it completed, if any."""
        for row, control in enumerate(self.rows):
            boundary = control.apply_due(self.step_index)
            if boundary.steering or boundary.changes:
                self._act(boundary, row)
        if self._position >= self.window:
            self._slide()

        sampled = self._decode(*self._inputs)
        position = self._position
        resolved = self.delay.resolve(position, sampled)
        self._step_halves.copy_(resolved)  # broadcast into both CFG halves
        self._inputs = (self._step_tokens, self._position_views[position])
        self._position += 1
        self.step_index += 1
        frame = self.delay.completed_frame(position)
        if frame is None:
            return None
        return Frame.fetch(self.frame_offset + frame, self.delay.frame(frame))

    def _decode(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Run the decoder on the pending input, set last_logits, return the sampled tokens (B, K).
        GraphGenerator overrides this to send single-token steps through a captured graph."""
        attend = self._position  # cache positions valid after this input: no read back from the device
        capture = self.capture if self.capture is not None else ({} if self.meter is not None else None)
        logits = decoder_fn.forward(self.dec, tokens, positions, self.cache, self.steering, attend, capture)
        if self.meter is not None:
            self._read_meter(capture[self.meter.tap])
        self.last_logits = logits[:, :, -1]
        sampler = sampler_of(self.control.values)
        return sample_tokens(guided_logits(self.last_logits, sampler.guidance), sampler, self.draw_rng)

    def _read_meter(self, hidden: Tensor) -> None:
        """Hand the meter this token's tap activation (2B, T, d); pass a reading on to the listeners."""
        reading = self.meter.observe(self.step_index, hidden, self.control)
        if reading is not None:
            self.listeners.emit(reading)

    @property
    def done(self) -> bool:
        """True once a finite session (set_end) has produced its last frame."""
        return self.end_frame is not None and self.frames_completed >= self.end_frame

    @property
    def steps_to_slide(self) -> int:
        """Tokens made before the next window slide: the step after them re-prefills `keep` frames."""
        return max(0, self.window - self._position)

    @torch.no_grad()
    def time_slide(self, sample: int = 64) -> float:
        """Seconds a window slide's re-prefill (keep + max_delay + 1 positions, every stream, both CFG
        halves) should take on this machine: the decoder run over `sample` positions of padding, scaled
        to the slide's length. Measured: on the tiny model's CPU this errs long (92-134 ms against 87-89
        for the whole prefill), and it costs a tenth of timing the whole (musicgen-small on a CPU: 9.4 s).
        For a paced session (engine/lead.py) to queue that much more audio before a slide. Call between
        start() and the first step: its writes to the self-attention cache land at positions the first
        prefill and the steps overwrite before anything attends to them."""
        if self.step_index:
            raise RuntimeError("time_slide() runs between start() and the first step")
        length = min(self.keep + self.delay.max_delay + 1, self.window)
        timed = min(sample, length)
        tokens = torch.full((2 * self.batch, self.lm.num_codebooks, timed), self.lm.pad_token_id,
                            dtype=torch.long, device=self.lm.device)
        began = time.perf_counter()
        decoder_fn.forward(self.dec, tokens, self._positions[:timed], self.cache, self.steering, timed, None)
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        return (time.perf_counter() - began) * length / timed

    @property
    def frames_completed(self) -> int:
        return self.frame_offset + max(0, self._position - 1 - self.delay.max_delay)

    # -- internals ----------------------------------------------------------------------------
    def _act(self, boundary: Boundary, row: int) -> None:
        """Do what the changes applied to stream `row` at this boundary call for, then tell the listeners."""
        if boundary.steering:
            self.steering.set_terms(self.rows[row].terms(), row=row)
        if boundary.prompt is not None:
            self._set_prompt()
        if boundary.seed is not None:
            self.rngs[row].manual_seed(boundary.seed)
        if boundary.changes:
            if self.batch > 1:
                self._check_shared()
            self.listeners.emit(Applied(self.step_index, tuple(boundary.changes), row))

    def _check_shared(self) -> None:
        """The sampler's settings are the batch's: refuse streams whose values differ (MusicsteerError)."""
        first = sampler_of(self.control.values)
        for row, control in enumerate(self.rows[1:], 1):
            theirs = sampler_of(control.values)
            differ = [k for k in SAMPLER if getattr(theirs, k) != getattr(first, k)]
            if differ:
                raise MusicsteerError(f"stream {row}'s {differ[0]} differs from stream 0's: the sampler's knobs "
                                      f"({', '.join(SAMPLER)}) are the whole batch's")

    def _warn(self, text: str) -> None:
        self.listeners.emit(Notice(self.step_index, "warning", text))

    def _set_prompt(self) -> None:
        """Every stream's prompt into the cross-attention cache: (2B, S, d_text) states laid out
        [conditional 0..B-1, unconditional 0..B-1], each padded to the longest (a masked position
        gets exactly zero attention, so padding changes no stream's numbers)."""
        encoded = [self.prompts.states(control.values.prompt) for control in self.rows]
        if len(encoded) == 1:
            states, mask = encoded[0]
        else:
            length = max(s.shape[1] for s, _ in encoded)
            pad = torch.nn.functional.pad
            padded = [(pad(s, (0, 0, 0, length - s.shape[1])), pad(m, (0, length - m.shape[1]))) for s, m in encoded]
            states = torch.cat([s[:1] for s, _ in padded] + [s[1:] for s, _ in padded])
            mask = torch.cat([m[:1] for _, m in padded] + [m[1:] for _, m in padded])
        self.dec.fill_cross_attention(self.cache, states, mask)

    def _begin_window(self, known: Tensor | list[Tensor] | None) -> None:
        self.delay.reset(known)
        if self.end_frame is not None:
            self.delay.end_frame = self.end_frame - self.frame_offset
        tokens = self.delay.prefill_tokens()  # (B, K, P+1)
        length = tokens.shape[-1]
        self._inputs = (tokens.repeat(2, 1, 1), self._positions[:length])
        self._position = length

    def _slide(self) -> None:
        """Window full: carry the last `keep` frames of every codebook into a fresh window."""
        last = self._position - 1  # the newest sampled position (its token is not yet in the cache)
        generated = [last - d for d in self.delay.delays]  # frames held per codebook
        start = min(generated) - self.keep
        tail = [self.delay.codes[:, k, start:n].clone() for k, n in enumerate(generated)]
        self.frame_offset += start
        self._begin_window(tail)
        if self.on_slide is not None:
            self.on_slide(checkpoint.capture(self, tail))


def render_batch(gen: Generator, total_frames: int, prompt_codes: Tensor | None = None,
                 on_frame: Callable[[Frame], None] | None = None, pad_end: bool = True) -> Tensor:
    """Run a finite session to `total_frames` (prompt frames included); return codes (B, K, total_frames),
    one row per stream. prompt_codes: (B, K, F) or (1, K, F) (every stream continues it), or None.

    pad_end: end as generate does (the last delayed codebooks see padding). A replay of a live
    session, which never knew where it would stop, passes False to continue as the stream did."""
    gen.start(prompt_codes)
    if pad_end:
        gen.set_end(total_frames)
    frames = [] if prompt_codes is None else list(prompt_codes.expand(gen.batch, -1, -1).cpu().unbind(-1))
    while len(frames) < total_frames:
        frame = gen.step()
        if frame is not None:
            frames.append(frame.codes)
            if on_frame is not None:
                on_frame(frame)
    return torch.stack(frames, dim=-1)


def render_codes(gen: Generator, total_frames: int, prompt_codes: Tensor | None = None,
                 on_frame: Callable[[Frame], None] | None = None, pad_end: bool = True) -> Tensor:
    """`render_batch` of a one-stream session: codes (K, total_frames)."""
    if gen.batch != 1:
        raise ValueError(f"render_codes renders one stream; this generator has {gen.batch}: use render_batch")
    return render_batch(gen, total_frames, prompt_codes, on_frame, pad_end)[0]
