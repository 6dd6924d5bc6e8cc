"""Text prompts -> T5 states for cross-attention, encoded off the generation thread.

The text encoder's cost grows with the prompt (musicgen-small on a 2-core CPU: 1,500 tokens took
6 s); run between two tokens, that is silence. So a live prompt change is handed to the prompt
thread when it is submitted (control.ControlState.prepare) and enters the control inbox only once its
states are ready; the generation thread then swaps them in at the next token boundary, and the
session log records the step it took effect at, so `render --replay` (which applies it at that step,
encoding there) gives the same codes. A scheduled prompt (automation, a replayed log) is encoded
ahead in the same way and waited for if it is due before it is ready.

What waits to be encoded is bounded, and no sender can hold it. A live prompt replaces the prompt its
source (controllers name theirs: an OSC sender's host, a page's host) has waiting, if any: a newer
prompt from one sender supersedes its older one, which would have played for a token or two only. At
most PENDING sources wait; past that the oldest waiting prompt (another source's) gives way. So a
sender posting prompts faster than the encoder takes them holds one place, and the performer's prompt
is always taken (it was refused `busy` once a flood filled the 8 places). What gave way is returned to
the caller (ControlState counts it `superseded`). Prompts encoded ahead for a schedule wait apart (at
most PENDING; past that they are encoded when due) and after live ones, so they take no live place.

Prompts longer than the encoder's limit are cut to it (the tokenizer's `model_max_length`, else T5's
trained 512 tokens: Raffel et al. 2020, §3.1.1), and the performer is told.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import printable

if TYPE_CHECKING:
    from .events import Change
    from .loading import LoadedModel

T5_TOKENS = 512  # T5's training length, used when a tokenizer states no limit
PENDING = 8  # live prompts waiting to be encoded (one per source), and as many scheduled ones
KEPT = 16  # encoded prompts kept for the boundary that applies them (states are S x d_text each)


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
        self._busy: dict[str, threading.Event] = {}  # prompts waiting or being encoded now
        self._holds: collections.Counter[str] = collections.Counter()  # how many entries wait for each
        self._live: collections.OrderedDict[Hashable, tuple[str, Callable[[], None]]] = collections.OrderedDict()
        self._ahead: collections.deque[str] = collections.deque()  # scheduled prompts, encoded ahead
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._unfinished = 0  # entries waiting or being encoded (settle waits for none)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.encoded = 0  # prompts encoded on the prompt thread (tests, status)

    def request(self, change: Change, then: Callable[[], None] | None, source: Hashable = None) -> str | None:
        """Encode `change.value` ahead (any thread, never blocks); call `then()` from the prompt thread once
        it is ready. A live prompt (`then`) takes the place of `source`'s waiting one, or past PENDING
        sources of the oldest waiting; that prompt, never applied now, is returned (None: nothing gave way).
        A scheduled one (no `then`) past PENDING waiting is simply encoded when due."""
        prompt = change.value
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="musicsteer-prompt", daemon=True)
                self._thread.start()
            gave_way = None
            if then is None:
                if len(self._ahead) >= PENDING:
                    return None
                self._ahead.append(prompt)
            else:
                old = self._live.pop(source, None)
                if old is None and len(self._live) >= PENDING:
                    old = self._live.popitem(last=False)[1]  # another source's, the oldest: it gives way
                if old is not None:
                    gave_way = old[0]
                    self._release(gave_way)
                    self._unfinished -= 1
                self._live[source] = (prompt, then)  # the newest: taken after every prompt now waiting
            self._holds[prompt] += 1
            self._busy.setdefault(prompt, threading.Event())
            self._unfinished += 1
            self._changed.notify_all()
        return gave_way

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
        with self._changed:
            self._changed.wait_for(lambda: self._unfinished <= 0 or self._thread is None)

    def close(self) -> None:
        """End the prompt thread (a later request starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._changed.notify_all()
        if thread is not None:
            thread.join(timeout=30)

    def _release(self, prompt: str) -> None:
        """One entry for `prompt` no longer waits (the lock held); the last one wakes whoever waits for it."""
        self._holds[prompt] -= 1
        if self._holds[prompt] <= 0:
            del self._holds[prompt]
            event = self._busy.pop(prompt, None)
            if event is not None:
                event.set()

    def _encode(self, prompt: str) -> tuple[Tensor, Tensor]:
        states, mask, truncated = encode_text(self.lm, prompt)
        if truncated and self.warn is not None:
            self.warn(f"prompt cut to the text encoder's {token_limit(self.lm)} tokens: {printable(prompt)[:60]}…")
        return states.to(self.lm.dtype), mask

    def _next(self) -> tuple[str, Callable[[], None] | None] | None:
        """The next entry to encode, live prompts first (None: the thread is to end)."""
        with self._changed:
            self._changed.wait_for(lambda: self._live or self._ahead or self._stopping)
            if self._stopping:
                return None
            return self._live.popitem(last=False)[1] if self._live else (self._ahead.popleft(), None)

    def _run(self) -> None:
        if self.lm.device.type == "cuda":
            torch.cuda.set_device(self.lm.device)  # a new thread starts on device 0
        while (item := self._next()) is not None:
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
                self._release(prompt)
            if then is not None:
                then()
            with self._changed:
                self._unfinished -= 1
                self._changed.notify_all()
