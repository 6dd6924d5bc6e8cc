"""Streaming EnCodec decode: complete frames of codes in, settled PCM chunks out, at constant cost.

The 32 kHz EnCodec decoder is conv(k7) -> LSTM -> transposed-conv upsampler (x640) with symmetric
(non-causal) padding. Re-decoding the whole history per chunk (the HF demo) is quadratic; instead
each chunk decodes a bounded window [context | new samples | lookahead] and keeps only the new
samples, which the lookahead has settled.

The lookahead is counted in samples, not frames: a sample is settled once the codes its receptive
field reaches are in, which for the 32 kHz decoder is 3.75 frames past it (the first conv reads 3
frames ahead, the upsampler 0.75: `reach`, 2402 samples). Emitting up to exactly that point, rather
than in whole frames behind a 4-frame lookahead, puts each frame's audio out 158 samples (5 ms) sooner,
exact. Less than the reach trades fidelity for delay, and is not worth it by default: on the 32 kHz
architecture (random weights and codes) the ≥ 30 dB floor is reached at 2322 samples, 2.5 ms sooner,
but a take's audio is then no longer its replay's one-shot decode (27.6 dB with the seams
crossfaded, just over 30 without, and then each seam steps by the edge's error).

The LSTM is the one part with unbounded memory. A bounded left context only approximates it, so
by default we carry the LSTM's (h, c) state across chunks instead: it is advanced only over frames
whose conv inputs are already final, so it equals the one-shot state (up to rounding), and the
window then needs only the convs' few frames of receptive field. `stateful_lstm=False` decodes each
window from a zero state (for decoders laid out differently, and to measure what context costs).

Measured on the real 32 kHz architecture (random weights, random codes), SNR vs one-shot decode:
stateful, context 1 / lookahead 3.75 frames: 107-120 dB (float rounding); 3.625: 40 dB; 3.5: 25 dB;
3: 13 dB; context 0: 14 dB.
Stateless (zero LSTM state), lookahead 4: context 1: 8 dB, 10: 61 dB, 25: 115 dB -- and a trained
LSTM may remember longer than a random one, while stateful is exact whatever the weights.
Cost per chunk on this 2-core CPU, 1 thread (2026-12-01): the real architecture is compute, 87 ms
for 1 frame and ~100 for 5, with transformers' modules or without; the tiny model's is overhead, and
the layers run as plain functional calls (engine/seanet.py) take it from 5.0 to 1.9 ms per 1-frame chunk.

A take that continues an audio prompt is primed with the prompt's frames (prime): the LSTM runs over
all of them in one call and nothing is upsampled, so the continuation is the one-shot decode of
prompt + continuation from its first sample (120 dB; a cold start: 5 dB over its first 100 ms). A
10 s prompt primes in 0.75-1.4 s on 1 thread of this loaded 2-core CPU, against 4.8-5.5 s to decode
it one-shot; priming from its last 0.5 s only would be 114 dB here, but a trained LSTM may remember
longer, so every frame is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import MusicsteerError
from .seanet import compile_layers

if TYPE_CHECKING:
    from .loading import LoadedModel


@dataclass
class StreamingConfig:
    context_frames: int = 1  # left frames re-upsampled before each chunk: the upsampler reads 1.7 back
    # Samples of codes past an emitted sample that must be in first. None: the decoder's whole right
    # reach (`StreamingDecoder.reach`: exact). Fewer trade fidelity for delay (the module's docstring).
    lookahead_samples: int | None = None
    chunk_frames: int = 5  # emit at least 5 frames (100 ms) at a time: per-call overhead vs latency
    crossfade_samples: int = 128  # 4 ms raised-cosine seam with the previous chunk's tail (approximate lookahead)
    stateful_lstm: bool = True  # carry LSTM state (exact); False: zero state + context (approximate)


class StreamingDecoder:
    """Push frames of codes as they are generated; get back audio as soon as it is settled."""

    def __init__(self, lm: LoadedModel, config: StreamingConfig | None = None) -> None:
        self.config = cfg = config or StreamingConfig()
        self.codec = lm.model.audio_encoder
        self.device, self.dtype = lm.device, lm.dtype
        self.channels, self.num_codebooks = lm.audio_channels, lm.num_codebooks
        self.hop = lm.sample_rate // lm.frame_rate  # samples per frame (640 at 32 kHz / 50 Hz)
        self.frame_ms = 1000.0 / lm.frame_rate
        self.lm = lm
        # Samples past an output sample whose codes it depends on: the whole decoder's right reach.
        self.reach = math.ceil(_right_reach_frames(self.codec.decoder) * self.hop)
        self.lookahead = self.reach if cfg.lookahead_samples is None else cfg.lookahead_samples
        if min(cfg.context_frames, self.lookahead, cfg.crossfade_samples) < 0 or cfg.chunk_frames < 1:
            raise MusicsteerError(f"invalid streaming config {cfg}")
        if cfg.crossfade_samples > self.lookahead:
            # the tail we fade out of is decoded from the lookahead's codes, so it cannot be longer
            raise MusicsteerError("crossfade_samples must be <= the lookahead in samples")
        layers = list(self.codec.decoder.layers)
        lstm = getattr(layers[1], "lstm", None) if len(layers) > 2 else None
        self._stateful = cfg.stateful_lstm and isinstance(lstm, torch.nn.LSTM)
        if self._stateful:
            self._lstm = lstm
            self._pre, self._post = compile_layers(layers[:1]), compile_layers(layers[2:])
            # frames of right context the first conv reads: features nearer the window's end than
            # this see reflect padding instead of codes, so the state must not advance over them
            self._pre_reach = (int(layers[0].conv.kernel_size[0]) - 1) // 2
            self._post_reach = math.ceil(_right_reach_frames(torch.nn.Sequential(*layers[2:]))
                                         + cfg.crossfade_samples / self.hop)
        else:
            self._whole = compile_layers(layers)  # an LSTM stays the module: run from a zero state
        fade = (np.arange(cfg.crossfade_samples) + 0.5) / max(cfg.crossfade_samples, 1)
        self._fade_in = (0.5 - 0.5 * np.cos(np.pi * fade)).astype(np.float32)  # sums to 1 with 1 - it
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new one at frame 0."""
        self._codes = torch.empty((self.num_codebooks, 0), dtype=torch.long, device=self.device)
        self._base = 0  # absolute frame index of self._codes[:, 0]
        self._done = 0  # samples emitted (counting the primed frames', never emitted)
        self._state: tuple[Tensor, Tensor] | None = None  # LSTM (h, c) after frame self._state_pos - 1
        self._state_pos = 0
        self._tail: np.ndarray | None = None  # decoded samples just past the emitted ones, to fade out of
        self._flushed = False
        self._primed = 0  # prompt frames before frame 0 of frames_in (their audio is never emitted)
        self.frames_in = 0  # frames pushed (primed ones not included)
        self.samples_out = 0  # samples emitted: frames_in * hop once flushed (primed ones not included)
        self.last_decode_frames = 0  # code frames the last chunk decoded (bounded: the cost per chunk)
        self.last_decode_ms = 0.0

    @property
    def latency_ms(self) -> float:
        """Added algorithmic latency: a sample waits for its chunk to fill, then for the lookahead."""
        return (self.lookahead / self.hop + self.config.chunk_frames) * self.frame_ms

    @property
    def lookahead_frames(self) -> int:
        """Frames of codes pushed past a frame before its last sample can be emitted (the lookahead, rounded up)."""
        return math.ceil(self.lookahead / self.hop)

    def set_lookahead(self, samples: int) -> None:
        """Use `samples` of lookahead from the next stream on (between streams: call reset() after)."""
        if not self.config.crossfade_samples <= samples:
            raise MusicsteerError(f"a lookahead of {samples} samples is shorter than the crossfade")
        self.config.lookahead_samples = self.lookahead = int(samples)

    @torch.inference_mode()
    def prime(self, codes: Tensor) -> None:
        """Start a new stream that continues `codes`, the audio prompt's frames: (K, F) or (1, K, F) long.

        Their audio is not emitted (the listener has heard the prompt; a take records only what
        follows it): the stream is left as if it had emitted every sample of them, so the first
        chunk push() returns starts exactly at the continuation's first sample and equals a one-shot
        decode of prompt + continuation there. frames_in and samples_out count only the continuation.
        The LSTM runs over all F frames in one call (exact whatever its memory; on 1 CPU thread about
        0.1 s per second of prompt); the upsampler, the costly part, runs on none of them. Raises
        MusicsteerError on a wrong shape; any earlier stream is forgotten (reset)."""
        self.reset()
        codes = self._checked(codes)
        frames = codes.shape[1]
        keep_from = max(0, frames - self.config.context_frames)  # the first chunk re-upsamples from here
        if self._stateful:
            # Where a push's chunks leave it: the first conv's features read `pre_reach` code frames
            # ahead, so up to here they are the one-shot decode's (no continuation frame reaches
            # them), and the first chunk's LSTM resumes here, at or before `keep_from`.
            self._state_pos = max(0, min(keep_from, frames - self._pre_reach))
            if self._state_pos:
                embeddings = self._embed(codes[:, : self._state_pos + self._pre_reach])
                hidden = self._pre(embeddings)[..., : self._state_pos].permute(2, 0, 1).contiguous()
                _, self._state = self._lstm(hidden)  # one call over every frame: the exact state
            keep_from = max(0, self._state_pos - self._pre_reach)  # the first conv's left reach
        self._codes, self._base = codes[:, keep_from:], keep_from
        # No tail to crossfade from: the first chunk's left edge is settled by its context frames
        # alone (measured against one-shot: 120 dB from its first sample; with no context, 13 dB).
        self._primed, self._done = frames, frames * self.hop

    def push(self, codes: Tensor) -> np.ndarray | None:
        """codes (K,) or (K, n) long -> float32 (channels, samples) newly settled audio, or None: at least a
        chunk, up to the last sample `lookahead` samples before the codes' end."""
        if self._flushed:
            raise MusicsteerError("StreamingDecoder.push after flush(); call reset() to start a new stream")
        codes = self._checked(codes)
        self._codes = torch.cat([self._codes, codes], dim=1)
        self.frames_in += codes.shape[1]
        hop, out, received = self.hop, [], self._primed + self.frames_in
        settled, chunk = received * hop - self.lookahead, self.config.chunk_frames * hop  # settled: codes all in
        while settled - self._done >= chunk:
            # a chunk at a time (bounded windows), the last one up to the newest settled sample
            end = self._done + chunk if settled - self._done >= 2 * chunk else settled
            out.append(self._decode_chunk(end, min(received, -(-(end + self.lookahead) // hop))))
        return np.concatenate(out, axis=1) if out else None

    def flush(self) -> np.ndarray:
        """End of stream: decode what is left with no lookahead (the one-shot decode's right edge),
        so that the total output is exactly frames_in * hop samples."""
        received = self._primed + self.frames_in
        out = self._decode_chunk(received * self.hop, received) if self._done < received * self.hop else None
        self._flushed, self._tail = True, None
        return out if out is not None else np.zeros((self.channels, 0), dtype=np.float32)

    def _checked(self, codes: Tensor) -> Tensor:
        """codes (K,), (K, n) or (1, K, n) -> (K, n) long on the decoder's device; MusicsteerError if not."""
        codes = torch.as_tensor(codes).to(self.device, torch.long)
        codes = codes[:, None] if codes.dim() == 1 else codes[0] if codes.dim() == 3 and len(codes) == 1 else codes
        if codes.dim() != 2 or codes.shape[0] != self.num_codebooks:
            raise MusicsteerError(f"expected codes of shape ({self.num_codebooks},) or ({self.num_codebooks}, n), "
                                  f"got {tuple(codes.shape)}")
        return codes

    def _embed(self, codes: Tensor) -> Tensor:
        """codes (K, n) -> quantizer embeddings (channels, D, n) in the decoder's dtype."""
        # stereo: the ::2 / 1::2 codebook groups are two mono streams, decoded as a batch of 2
        groups = codes[None] if self.channels == 1 else torch.stack([codes[0::2], codes[1::2]])
        return self.codec.quantizer.decode(groups.transpose(0, 1)).to(self.dtype)

    @staticmethod
    def _to_host(audio: Tensor) -> np.ndarray:
        """A chunk's audio (C, 1, samples) on the device -> float32 (C, samples) numpy: the chunk's one read
        back to the host (tests/test_fake_device.py checks nothing else in a chunk leaves the device)."""
        return audio[:, 0].float().cpu().numpy()

    # ------------------------------------------------------------------ one chunk

    @torch.inference_mode()
    def _decode_chunk(self, end: int, window_end: int) -> np.ndarray:
        """Emit samples [self._done, end), decoding the frames of codes before window_end."""
        start = time.perf_counter()
        cfg, hop = self.config, self.hop
        first = max(0, self._done // hop - cfg.context_frames)  # first frame through the upsampler
        if self._stateful:
            next_first = max(0, end // hop - cfg.context_frames)
            # advance the LSTM state only over frames whose first-conv input is all real codes
            save_at = max(self._state_pos, min(next_first, window_end - self._pre_reach))
            codes_from = max(0, self._state_pos - self._pre_reach)
        else:
            codes_from = first
        embeddings = self._embed(self._codes[:, codes_from - self._base : window_end - self._base])  # (C, D, T)
        if self._stateful:
            # the upsampler needs features only slightly past the samples we keep; the rest of the
            # lookahead only settles the first conv, so neither the LSTM nor the upsampler runs on it
            post_end = min(window_end, -(-end // hop) + self._post_reach)
            hidden = self._pre(embeddings)[..., self._state_pos - codes_from : post_end - codes_from]
            seq = hidden.permute(2, 0, 1).contiguous()  # (T, C, D): nn.LSTM's layout; contiguous: 2x faster matmul
            out, self._state = _lstm_steps(self._lstm, seq, self._state, save_at - self._state_pos)
            hidden = (out + seq).permute(1, 2, 0)[..., first - self._state_pos :]  # EncodecLSTM's residual
            self._state_pos = save_at
            audio = self._post(hidden)
            self.last_decode_frames = window_end - codes_from
        else:
            audio = self._whole(embeddings)
            self.last_decode_frames = window_end - first
        audio = self._to_host(audio)  # (C, samples), starting at frame `first`
        lo, hi = self._done - first * hop, end - first * hop
        chunk = audio[:, lo:hi].copy()
        fade = min(len(self._fade_in), chunk.shape[1])
        if self._tail is not None and fade:
            # the previous chunk decoded these samples too, from a window that ended nearer them:
            # blend from its version into ours so the seam has no step
            w = self._fade_in[:fade]
            chunk[:, :fade] = self._tail[:, :fade] * (1.0 - w) + chunk[:, :fade] * w
        # Only a seam that can step needs the fade: past a full lookahead (stateful) both sides are exact,
        # and the tail, decoded before all its codes were in, would only add its error.
        approximate = self.lookahead < self.reach or not self._stateful
        self._tail = audio[:, hi : hi + len(self._fade_in)] if approximate and window_end * hop > end else None
        self._done = end
        keep_from = (max(0, self._state_pos - self._pre_reach) if self._stateful
                     else max(0, end // hop - cfg.context_frames))
        self._codes = self._codes[:, keep_from - self._base :]  # bounded memory: drop frames no window needs
        self._base = keep_from
        self.samples_out += chunk.shape[1]
        self.last_decode_ms = (time.perf_counter() - start) * 1000.0
        return chunk


def _lstm_steps(lstm: torch.nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor] | None,
                split: int) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """nn.LSTM's recurrence (gates i, f, g, o) written out, returning the outputs for x (T, B, D)
    and the (h, c) state after its first `split` steps. Written out because nn.LSTM returns only the
    final state (two calls would be needed), and on CPU its oneDNN kernel re-packs the weights on
    every call: measured 62 ms against 15 ms for this loop on a 7-step window (1 thread)."""
    if state is None:
        zeros = x.new_zeros(lstm.num_layers, x.shape[1], lstm.hidden_size)
        state = (zeros, zeros)
    saved_h, saved_c = [], []
    for k in range(lstm.num_layers):
        w_hh = getattr(lstm, f"weight_hh_l{k}")
        bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
        gates_in = F.linear(x, getattr(lstm, f"weight_ih_l{k}"), bias)  # the input part, all steps at once
        h, c, outs = state[0][k], state[1][k], []
        for t in range(x.shape[0] + 1):
            if t == split:
                saved_h.append(h)
                saved_c.append(c)
            if t == x.shape[0]:
                break
            i, f, g, o = (gates_in[t] + F.linear(h, w_hh)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        x = torch.stack(outs) if outs else x[:0]
    return x, (torch.stack(saved_h), torch.stack(saved_c))


def _right_reach_frames(layers: torch.nn.Module) -> float:
    """How far past an output sample (in frames) the upsampler stack reads its input features.

    EncodecConv1d pads (k-1)*d // 2 on the right; EncodecConvTranspose1d trims (k-s) - (k-s)//2 on
    the left, so each output looks that many of its *input* samples ahead. Summed in frame units:
    0.75 frames for the 32 kHz model (measured by perturbing one feature frame: same)."""
    reach, rate = 0.0, 1  # rate: samples per frame at the current layer's input
    for module in layers.modules():
        if isinstance(module, torch.nn.ConvTranspose1d):
            k, s = module.kernel_size[0], module.stride[0]
            reach += ((k - s) - (k - s) // 2) / s / rate
            rate *= s
        elif isinstance(module, torch.nn.Conv1d):
            reach += (module.kernel_size[0] - 1) * module.dilation[0] // 2 / rate
    return reach
