"""The decode step as one static-shape function, captured once as a CUDA graph (gpt-fast style).

Eager PyTorch on a GPU is launch-bound: a musicgen-small step launches hundreds of kernels (145
matmuls alone), each costing more host time than the GPU needs for it (docs/cuda.md). `GraphDecoder`
runs one whole decode step (every layer, every steering slot, the CFG mix and the sampler) on
buffers allocated once, so it can be captured as a `torch.cuda.CUDAGraph` and replayed every token
with one launch.

What a replay reads, and how a value changes without recapture:
  tokens, position                  copied into static input buffers by `step` (device tensors)
  guidance, temperature, top-p,     0-d device tensors written by `set_sampling` from one `sampling.Sampler`
  min-p                             (only when it changed)
  steering alpha/direction/layer    `SteeringTensors(apply_all=True)`: copy_ in place, every slot computed
  prompt (same text-length bucket)  `KVCache.set_cross` copies in place
  seed                              each stream's torch.Generator's host state, read by every replay
Only a prompt in a new text-length bucket (it rebinds buffers the graph points at), a new top-k
(the draw's shape), switching greedy, top-p or min-p on or off, or another `tap` rebuilds; `step` notices
and rebuilds (counted in `builds`). On the CPU (`capture=False`) the same function runs eagerly, so
its numerics are what the CPU tests check. Prefill (many tokens at once) stays eager.

The genre meter reads inside the graph: the step copies the activation it taps (`tap`, e.g.
"unsteered.3") into the static buffer `tapped`, allocated with the others, and the meter reads it
after the replay. Only `Generator.capture` (every activation, for probes and tests) needs the eager
step.

A capture the runtime refuses (an op that cannot be captured, an out-of-memory, the driver), or a replay that
fails (an out-of-memory at the first replay, a fault later), falls back to the same static step run uncaptured,
with one warning (`fallback`, `on_fallback`): never the end of a session. Where CUDA's error is sticky (an
illegal memory access poisons the process's context) the uncaptured step fails too: that is one
MusicsteerError line, not a traceback.

`--decode` picks the token loop through `decode_step` and `GENERATORS`, for every command alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import decoder as decoder_fn
from . import sampling
from .decoder import FastDecoder
from .errors import MusicsteerError, one_line
from .generator import Generator
from .kv_cache import KVCache
from .params import DECODE
from .sampling import Sampler, sampler_of
from .steering import SteeringTensors

if TYPE_CHECKING:
    from .control import Controls
    from .loading import LoadedModel
    from .vectors import SteeringVectors

# torch's CUDA graph docs: run a few eager iterations on a side stream before capturing, so lazy
# initialisation (cuBLAS workspaces, autotuning) happens outside the graph.
WARMUP_STEPS = 3


class GraphDecoder:
    """One decode step (all layers, steering terms, CFG mix, sampling) on static buffers, for a
    batch of B streams (the cache's 2B CFG rows). rng: one generator (B = 1), or one per stream."""

    def __init__(self, dec: FastDecoder, cache: KVCache, steering: SteeringTensors,
                 rng: torch.Generator | Sequence[torch.Generator] | None = None, *,
                 capture: bool | None = None) -> None:
        if not steering.apply_all:
            # A graph cannot branch on which (site, layer) slots hold a term: it must compute all.
            raise ValueError("GraphDecoder needs SteeringTensors(apply_all=True)")
        device = cache.k.device
        capture = device.type == "cuda" if capture is None else capture
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graph capture needs a CUDA device, not {device}")
        self.dec, self.cache, self.steering, self.device, self.capture = dec, cache, steering, device, capture
        rngs = [torch.Generator(device=device)] if rng is None else [rng] if isinstance(rng, torch.Generator) else rng
        self.rngs = list(rngs)
        self.rng = self.rngs[0]
        # As the eager Generator draws: B = 1 with its one generator, a batch with one per stream.
        self.draw_rng = self.rng if len(self.rngs) == 1 else self.rngs
        batch2, codebooks, vocab = cache.k.shape[1], dec.num_codebooks, dec.vocab_size
        self.vocab = vocab
        # Static inputs.
        self.tokens = torch.zeros(batch2, codebooks, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.guidance = torch.zeros((), device=device)
        self.inverse_temperature = torch.ones((), device=device)
        self.top_p_floor = torch.full((), -1.0, device=device)
        self.min_p = torch.zeros((), device=device)
        # Shapes and branches of the sampler, fixed in a captured graph: a change rebuilds.
        self.k = vocab  # candidates per draw
        self.greedy = False
        self.top_p_on = False
        self.min_p_on = False
        # Static outputs: valid until the next step (copy them to keep them).
        self.logits = torch.zeros(batch2, codebooks, vocab, dtype=cache.k.dtype, device=device)
        self.sampled = torch.zeros(batch2 // 2, codebooks, dtype=torch.long, device=device)
        # The activation named by `tap` ("unsteered.{i}", "residual.{i}", "attention.{i}": see
        # decoder.forward), (2B, 1, d) as the eager step would hand it; None: the step copies none.
        self.tap: str | None = None
        self.tapped = torch.zeros(batch2, 1, dec.d_model, dtype=cache.k.dtype, device=device)
        self.builds = 0  # captures on CUDA; on the CPU, what would have been captured
        self.steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self.fallback: str | None = None  # why the capture failed, once it has (the step then runs uncaptured)
        # Told that one line when a capture fails (GraphGenerator: the session's warning, as a Notice).
        self.on_fallback: Callable[[str], None] = lambda text: warnings.warn(text, RuntimeWarning, stacklevel=2)
        self._bound: tuple | None = None
        self.sampler: Sampler | None = None  # the settings the buffers hold
        self.set_sampling(Sampler())  # the table's defaults

    # -- per-token API ----------------------------------------------------------------------
    def set_sampling(self, sampler: Sampler) -> None:
        """Take the sampler's settings whole, as `sampling.sample_tokens` reads them (top_k/top_p/min_p
        0 = off, greedy when temperature <= 0 or top_k == 1). Guidance, temperature, top-p and min-p
        are 0-d device tensors written in place, only when the settings changed (no launches
        otherwise). Top-k is the shape of the draw, greedy, top-p and min-p on/off are branches:
        changing one of those rebuilds the graph once (counted in `builds`); they are set-and-forget
        knobs, unlike the steering ones. Derived values are computed on the host in the precision the
        eager sampler uses, so CPU results match it bit for bit."""
        if sampler == self.sampler:
            return
        self.sampler = sampler
        self.guidance.fill_(sampler.guidance)
        self.inverse_temperature.fill_(1 / sampler.temperature if sampler.temperature > 0 else 1.0)
        floor = sampling.top_p_floor(sampler.top_p)
        self.top_p_on = floor is not None
        self.top_p_floor.fill_(floor if floor is not None else -1.0)
        cut = sampling.min_p_cut(sampler.min_p)
        self.min_p_on = cut is not None
        self.min_p.fill_(cut if cut is not None else 0.0)
        self.k = sampling.candidate_count(sampler.top_k, self.vocab)
        self.greedy = sampling.is_greedy(sampler.temperature, sampler.top_k)

    @torch.no_grad()
    def step(self, tokens: Tensor, position: int | Tensor) -> Tensor:
        """Decode tokens (2B, K, 1) at `position`; return the sampled tokens (B, K) (a static buffer).
        `self.logits` then holds the raw logits (2B, K, V) of both CFG halves, and `self.tapped` the
        activation `self.tap` names (2B, 1, d), if any. Raises IndexError for a position outside the
        cache, RuntimeError before the prompt is set."""
        self.tokens.copy_(tokens)
        if isinstance(position, Tensor):
            self.position.copy_(position.reshape(1))
        else:
            if not 0 <= position < self.cache.max_len:
                raise IndexError(f"position {position} outside the cache (0..{self.cache.max_len - 1})")
            self.position.fill_(position)
        if self._bound != self._binding():
            self._build()  # first step, or a prompt in a new text-length bucket rebound the cross k/v
        if self._graph is not None:
            # A replay advances each registered generator's Philox offset before it launches: a replay that
            # fails has moved the random stream, which the uncaptured rerun must find where it was.
            marks = [rng.get_offset() if rng.device.type == "cuda" else rng.get_state() for rng in self.rngs]
            try:
                self._graph.replay()
            except Exception as exc:  # noqa: BLE001 - whatever failed the replay, the performance goes on
                for rng, mark in zip(self.rngs, marks, strict=True):
                    rng.set_offset(mark) if isinstance(mark, int) else rng.set_state(mark)
                self._fall_back("replay", exc)
        if self._graph is None:
            self._run_uncaptured()  # also this step's rerun after a failed replay (its KV writes are idempotent)
        self.steps += 1
        return self.sampled

    def _fall_back(self, what: str, exc: BaseException) -> None:
        """A capture or replay failed: drop the graph (and its memory pool), run uncaptured from now on, say so once."""
        self._graph, self.capture = None, False
        self.fallback = (f"CUDA graph {what} failed ({type(exc).__name__}: {one_line(exc, 200)}); "
                         "decoding on without a graph (same music, slower steps)")
        self.on_fallback(self.fallback)

    def _run_uncaptured(self) -> None:
        """`_run`; after a fallback, an error here is the device's own (CUDA's sticky errors: an illegal memory
        access poisons every later launch in this process): one line, MusicsteerError, not a traceback."""
        if self.fallback is None:
            self._run()
            return
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - turned into the one line the command prints
            raise MusicsteerError(f"the GPU failed after the CUDA graph was dropped ({type(exc).__name__}: "
                                  f"{one_line(exc, 200)}); the device cannot go on in this process: start the "
                                  "session again") from exc

    # -- the static function ----------------------------------------------------------------
    def _run(self) -> None:
        # The dict only names tensors the forward computes anyway; the one copy out of it is the tap's.
        capture: dict[str, Tensor] | None = None if self.tap is None else {}
        logits = decoder_fn.forward(self.dec, self.tokens, self.position, self.cache, self.steering, None, capture)
        if capture is not None:
            self.tapped.copy_(capture[self.tap])
        raw = logits[:, :, -1]
        self.logits.copy_(raw)
        self.sampled.copy_(self._sample(sampling.guided_logits(raw, self.guidance)))

    def _sample(self, mixed: Tensor) -> Tensor:
        """`sampling.sample_tokens` with tensor knobs: no data-dependent shapes, no host sync."""
        if self.greedy:
            return mixed.argmax(dim=-1)  # draws nothing: the random stream is untouched, as in eager
        floor = self.top_p_floor if self.top_p_on else None
        cut = self.min_p if self.min_p_on else None
        probs, ids = sampling.candidates(mixed * self.inverse_temperature, self.k, floor, cut)
        # The race of sampling.draw, not torch.multinomial: the same draws, minus multinomial's
        # host-side validity check (.item()), which made it uncapturable until pytorch#134818.
        return sampling.draw(probs, ids, self.draw_rng)

    # -- capture ------------------------------------------------------------------------------
    def _binding(self) -> tuple:
        """What a captured graph depends on besides in-place tensors: the addresses of the buffers
        that can be rebound (the prompt's cross-attention k/v), the sampler's shape and branch, and
        which activation it copies into `tapped`."""
        c = self.cache
        if c.cross_k is None or c.cross_v is None or c.cross_mask is None:
            raise RuntimeError("set the prompt (KVCache.set_cross) before decoding")
        # Greedy is one branch whatever top-k, top-p and min-p say: changing them then rebuilds nothing.
        sampler = ("greedy",) if self.greedy else (self.k, self.top_p_on, self.min_p_on)
        return (c.cross_k.data_ptr(), c.cross_v.data_ptr(), c.cross_mask.data_ptr(), tuple(c.cross_k.shape), sampler,
                self.tap)

    def _build(self) -> None:
        self.builds += 1
        self._bound = self._binding()
        self._graph = None  # drop an old graph (and its memory pool) before capturing anew
        if not self.capture:
            return
        # Warm-up and capture must not move the sampling stream: a seed gives the same music
        # whether or not this token happened to trigger a (re)capture.
        states = [rng.get_state() for rng in self.rngs]
        try:
            self._graph = self._capture()
        except Exception as exc:  # noqa: BLE001 - whatever refused the capture, the performance goes on
            # An op that cannot be captured, an out-of-memory, a driver that refuses: the same static
            # step runs uncaptured from now on (the same codes, more launches per token), never a crash.
            self._fall_back("capture", exc)
        finally:
            for rng, state in zip(self.rngs, states, strict=True):
                rng.set_state(state)

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream, then capture `_run` into a new graph (the caller restores the generators)."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):  # recomputes this step: the KV writes are idempotent
                self._run()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # A non-default generator must be registered with the graph so each replay advances its
        # Philox offset (pytorch#114068); newer torch registers lazily (pytorch#176753) and
        # deprecates the call. Torch without either refuses the capture with a clear error.
        register = getattr(graph, "register_generator_state", None)
        if register is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for rng in self.rngs:
                    register(rng)
        # thread_local: the streaming decoder's thread keeps using CUDA (its own stream) while a
        # mid-session rebuild captures; the default "global" mode would fail the capture on that.
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
            self._run()
        return graph


class GraphGenerator(Generator):
    """A `Generator` whose single-token steps go through one `GraphDecoder`.

    Prefills (an audio prompt, window slides) and steps that read every activation (`capture`)
    stay eager. The genre meter does not need that: the step copies the meter's tap into
    `graph.tapped`, which the meter reads after the replay. For a fixed sampling mode the codes,
    logits, random stream and meter readings equal the eager Generator's (tests/test_graph.py).
    """

    steer_every_slot = True  # SteeringTensors(apply_all=True): the graph computes every slot

    def __init__(self, lm: LoadedModel, controls: Controls | None = None, vectors: SteeringVectors | None = None,
                 *, capture: bool | None = None, **kwargs: object) -> None:
        super().__init__(lm, controls, vectors, **kwargs)
        self.graph = GraphDecoder(self.dec, self.cache, self.steering, self.rngs, capture=capture)
        self.graph.on_fallback = self._warn  # a failed capture is one warning to the performer; the session goes on

    def _decode(self, tokens: Tensor, positions: Tensor) -> Tensor:
        if self.capture is not None or positions.numel() > 1:
            return super()._decode(tokens, positions)  # every activation wanted, or a prefill: eager
        meter = self.meter
        self.graph.tap = None if meter is None else meter.tap  # a meter attached or moved: one rebuild
        self.graph.set_sampling(sampler_of(self.control.values))
        sampled = self.graph.step(tokens, positions)
        self.last_logits = self.graph.logits
        if meter is not None:
            self._read_meter(self.graph.tapped)
        return sampled


# The token loops `--decode` chooses between, by the name `decode_step` returns.
GENERATORS: dict[str, type[Generator]] = {"eager": Generator, "graph": GraphGenerator}


def decode_step(decode: str, device: torch.device) -> str:
    """The token step `decode` ("auto", "graph" or "eager": the --decode choices) names on `device`:
    "graph" or "eager". auto is the captured graph on CUDA (where launch overhead bounds an eager
    step) and eager elsewhere; graph on the CPU is the same static step run without capture (it
    gives the eager codes, tests/test_graph.py). Every command that takes --decode asks here.
    Raises MusicsteerError for any other value."""
    if decode not in DECODE:
        raise MusicsteerError(f"--decode {decode!r} is not one of {', '.join(DECODE)}")
    return "graph" if decode == "graph" or (decode == "auto" and device.type == "cuda") else "eager"
