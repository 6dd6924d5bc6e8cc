"""The decode thread: frames of codes from the generation thread in, settled PCM out.

On one thread, the token step and the streaming EnCodec decode serialize: on a GPU every chunk's
EnCodec kernels wait behind the decode steps' (and the other way round), and on a CPU the decoder's
time is added to each token. Here the generation thread only hands each complete frame over through
a small bounded queue, and this thread decodes it and emits the PCM (the ring, then the recorder, paced
by the ring's space), so the next tokens are generated while the last chunk decodes.

On CUDA this thread runs the decoder on its own stream: EnCodec's kernels then overlap with the
generation thread's instead of queueing behind them on the default stream. The handoff is the Frame
itself, read here: its codes are host memory (a Frame may still be copying them off the GPU, and
reading `codes` waits for that copy, so that wait is this thread's, not the generation loop's), and
the decoder moves them to the device inside push(), so on this thread's stream, after that wait.

A take that continues an audio prompt (`prime`) starts from the prompt's frames: this thread primes
the decoder with them before the first frame, so the continuation has no seam. It does so on its own
stream (the decoder's state is then made where it is used: the caching allocator may hand a freed
block to another stream at once), and while the generation thread prefills the same prompt.

The queue is bounded (one decoder chunk by default) and `put` blocks while it is full: together
with the ring's pacing of `emit` this keeps how far generation runs ahead of playback bounded.
Every blocking call polls the stop event, so stop() never waits on a full or empty queue.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from .generator import Frame
    from .streaming_decoder import StreamingDecoder

_POLL_S = 0.05  # how often a blocked put/get looks at the stop event: the worst case added to stop()
_END = object()  # the generation thread's "no more frames": flush the decoder and mark the ring's end


class DecodeWorker:
    """A thread that decodes queued frames with `decoder` and passes each PCM chunk to `emit`.

    `emit(pcm)` may block (it waits for ring space); `end()` runs after the final flush of a stream
    that ran to its end. Errors go to `fail(err)`, which must set `stop` (the session's stop event).
    """

    def __init__(self, decoder: StreamingDecoder, emit: Callable[[np.ndarray], None], end: Callable[[], None],
                 stop: threading.Event, fail: Callable[[BaseException], None], depth: int) -> None:
        if depth < 1:
            raise ValueError(f"the decode queue needs room for at least one frame, got {depth}")
        self.decoder, self._emit, self._end, self._stop, self._fail = decoder, emit, end, stop, fail
        self.depth = depth
        self._queue: queue.Queue[Frame | object] = queue.Queue(maxsize=depth)
        device = torch.device(decoder.device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.finished = threading.Event()  # set when the thread exits, however it ends
        self.busy_seconds = 0.0  # in decoder.push / flush: excludes waits for frames and for ring space
        self.prime_seconds = 0.0  # in decoder.prime (not in busy_seconds: it emits no audio)
        self._prompt: Tensor | None = None
        self.frames_decoded = 0
        self.frames_put = 0  # frames queued by the generation thread (counted there)
        self.frames_done = 0  # frames decoded and their PCM emitted (counted here)
        self._thread = threading.Thread(target=self._run, name="musicsteer-decode", daemon=True)

    def start(self) -> None:
        if self.stream is not None:
            # The decoder's weights (and its private copies of them) were written on the caller's
            # stream; the decode stream must not read them before that work is done.
            self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        self._thread.start()

    def prime(self, prompt_codes: Tensor | None) -> None:
        """Continue an audio prompt: its frames, (1, K, F) or (K, F) long (None: no prompt), prime the
        decoder (StreamingDecoder.prime) on this thread before the first frame. Call before start()."""
        if self._thread.ident is not None:
            raise RuntimeError("DecodeWorker.prime after start()")
        self._prompt = prompt_codes

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:  # never started (the session failed before): nothing to join
            self._thread.join(timeout)

    # -- the generation thread's side ---------------------------------------------------------------
    def put(self, item: Frame | object) -> bool:
        """Queue a frame (its batch row 0 is decoded); blocks while the queue is full. False: stopped."""
        if item is not _END:
            self.frames_put += 1  # before it is queued: the decode thread may finish it at once
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    @property
    def in_flight(self) -> int:
        """Frames queued or being decoded whose PCM has not been emitted yet (each counter has one writer)."""
        return self.frames_put - self.frames_done

    def wait_for_room(self) -> bool:
        """Block until a put would not block (False: stopped). The generation thread waits here before a
        step rather than after it, so a change submitted meanwhile lands on the token made next, not
        behind a frame already made and waiting (one frame less of knob → heard, engine/latency.py)."""
        q = self._queue
        with q.not_full:  # the queue's own condition, notified at every get (uses its lock: no put/get race)
            while q.maxsize > 0 and q._qsize() >= q.maxsize and not self._stop.is_set():
                q.not_full.wait(_POLL_S)
        return not self._stop.is_set()

    def close(self) -> bool:
        """No more frames: the decoder flushes its lookahead and the ring is marked ended."""
        return self.put(_END)

    # -- this thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.stream is not None:
                torch.cuda.set_device(self.stream.device)  # a new thread starts on device 0
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                if self._prompt is not None:
                    began = time.perf_counter()
                    self.decoder.prime(self._prompt)
                    self.prime_seconds = time.perf_counter() - began
                while (item := self._get()) is not None:
                    # Waiting for a frame's codes (on CUDA, for the token's copy off the device) is
                    # generation's time, not the decoder's: read them before the clock starts.
                    codes = None if item is _END else item.codes[0]
                    began = time.perf_counter()
                    if codes is None:
                        pcm = self.decoder.flush()
                    else:
                        pcm = self.decoder.push(codes)
                        self.frames_decoded += 1
                    self.busy_seconds += time.perf_counter() - began
                    if pcm is not None:
                        self._emit(pcm)
                    if codes is not None:
                        self.frames_done += 1
                    if item is _END:
                        self._end()
                        return
        except BaseException as err:  # noqa: BLE001 - the session reports it from run(), recording safe
            self._fail(err)
        finally:
            self.finished.set()

    def _get(self) -> Frame | object | None:
        """The next queued item, or None once the session is stopping."""
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None
