"""Text prompts -> T5 states for cross-attention, encoded off the generation thread.

The text encoder's cost grows with the prompt (musicgen-small on a 2-core CPU: 1,500 tokens took
6 s); run between two tokens, that is silence. So a live prompt change is handed to the prompt
thread when it is submitted (control.ControlState.prepare) and enters the control inbox only once its
states are ready; the generation thread then swaps them in at the next token boundary, and the
session log records the step it took effect at, so `render --replay` (which applies it at that step,
encoding there) gives the same codes. A scheduled prompt (automation, a replayed log) is encoded
ahead in the same way and waited for if it is due before it is ready.

Prompts longer than the encoder's limit are cut to it (the tokenizer's `model_max_length`, else T5's
trained 512 tokens: Raffel et al. 2020, §3.1.1), and the performer is told.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import Busy, printable

if TYPE_CHECKING:
    from .events import Change
    from .loading import LoadedModel

T5_TOKENS = 512  # T5's training length, used when a tokenizer states no limit
PENDING = 8  # prompts waiting to be encoded; past this a flood is refused (Busy)
KEPT = 16  # encoded prompts kept for the boundary that applies them (states are S x d_text each)
_STOP = object()


def token_limit(lm: LoadedModel) -> int:
    limit = getattr(lm.processor.tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else T5_TOKENS


@torch.no_grad()
def encode_text(lm: LoadedModel, prompt: str) -> tuple[Tensor, Tensor, bool]:
    """Text -> (states (2, S, d_text), mask (2, S), truncated): the conditional row, then the null row
    (CFG's unconditional half attends to nothing). S <= token_limit(lm)."""
    limit = token_limit(lm)
    inputs = lm.processor(text=[prompt], padding=True, truncation=True, max_length=limit, return_tensors="pt")
    truncated = inputs.input_ids.shape[-1] >= limit and len(lm.processor.tokenizer(prompt).input_ids) > limit
    inputs = inputs.to(lm.device)
    states = lm.model.text_encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    states = states.last_hidden_state
    mask = inputs.attention_mask
    return torch.cat([states, torch.zeros_like(states)]), torch.cat([mask, torch.zeros_like(mask)]), truncated


class PromptEncoder:
    """Encodes prompts on its own thread; `states(prompt)` hands them to the generation thread.

    warn(text): called (from the prompt thread, or the caller's) when a prompt was truncated."""

    def __init__(self, lm: LoadedModel, warn: Callable[[str], None] | None = None) -> None:
        self.lm, self.warn = lm, warn
        self._ready: collections.OrderedDict[str, tuple[Tensor, Tensor]] = collections.OrderedDict()
        self._busy: dict[str, threading.Event] = {}  # prompts being encoded now or queued
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(PENDING)
        self._thread: threading.Thread | None = None
        self.encoded = 0  # prompts encoded on the prompt thread (tests, status)

    def request(self, change: Change, then: Callable[[], None] | None) -> None:
        """Encode `change.value` ahead (any thread, never blocks); call `then()` from the prompt thread
        once it is ready. A live prompt (`then`) is refused (Busy) when PENDING already wait; a scheduled
        one (no `then`) is then simply encoded when due."""
        prompt = change.value
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="musicsteer-prompt", daemon=True)
                self._thread.start()
            fresh = prompt not in self._busy
            self._busy.setdefault(prompt, threading.Event())  # before the put: the worker may take it at once
            try:
                self._queue.put_nowait((prompt, then))
            except queue.Full:
                if fresh:
                    self._busy.pop(prompt).set()
                if then is None:
                    return
                raise Busy(f"{PENDING} prompts are already waiting to be encoded; this one is refused") from None

    def states(self, prompt: str) -> tuple[Tensor, Tensor]:
        """The encoded prompt: ready, or being encoded (waited for), or encoded here and now."""
        with self._lock:
            pending = self._busy.get(prompt)
        if pending is not None:
            pending.wait()
        with self._lock:
            ready = self._ready.get(prompt)
        if ready is not None:
            return ready
        return self._encode(prompt)

    def settle(self) -> None:
        """Wait until every requested prompt is encoded and handed on (tests, a replay's last step)."""
        self._queue.join()

    def close(self) -> None:
        """End the prompt thread (a later request starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout=30)

    def _encode(self, prompt: str) -> tuple[Tensor, Tensor]:
        states, mask, truncated = encode_text(self.lm, prompt)
        if truncated and self.warn is not None:
            self.warn(f"prompt cut to the text encoder's {token_limit(self.lm)} tokens: {printable(prompt)[:60]}…")
        return states.to(self.lm.dtype), mask

    def _run(self) -> None:
        if self.lm.device.type == "cuda":
            torch.cuda.set_device(self.lm.device)  # a new thread starts on device 0
        while (item := self._queue.get()) is not _STOP:
            prompt, then = item
            try:
                encoded = self._encode(prompt)
            except Exception:  # noqa: BLE001 - redone, and raised where it counts, by states() when due
                encoded = None
            with self._lock:
                if encoded is not None:
                    self._ready[prompt] = encoded
                    self._ready.move_to_end(prompt)
                    while len(self._ready) > KEPT:
                        self._ready.popitem(last=False)
                    self.encoded += 1
                event = self._busy.pop(prompt, None)
            if event is not None:
                event.set()
            if then is not None:
                then()
            self._queue.task_done()
        self._queue.task_done()  # the stop itself: settle() never waits on it
