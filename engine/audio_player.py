"""Playing through a child process that owns PortAudio: how a lost output device is played again.

Once a JACK server dies under an open stream, this process's PortAudio is done for: Pa_CloseStream and
Pa_Terminate abort on an assert (engine/audio_out.py), and a new JACK client cannot be made either.
Measured here (PortAudio 19.6.0, JACK 1.9.21, dummy backend): with the dead stream abandoned and the
server back under the same name, a second, fresh copy of libportaudio (a copy of the .so: dlopen loads
it anew) initialised in this process segfaults inside libjack's jack_client_open, whose process-wide
state still holds the dead server's. So a returned device is played by a child process:

    session ring ──(relay thread: one block at a time, as a callback reads)──▶ Fifo (a file in /dev/shm)
                                                                                  │
                          child: `python -m musicsteer.engine.audio_player` ◀────┘ its PortAudio callback copies

The child finds the device by the name and host API the session resolved at start, opens it as the
first stream was opened (the JACK period, or the same block), says `ready BLOCK LATENCY` on stdout and
then writes one byte per callback there: the relay wakes on it, so the Fifo is refilled right after
each callback and holds at most `FIFO_BLOCKS` blocks (the latency the child adds). What the child
cannot do (no such device, the server not up, the open refused) it says as `absent REASON` and exits:
the same program is the probe, and a PortAudio that aborts takes only the child with it. The child
exits when its stdin closes (the session stopped, or died) without terminating PortAudio: the OS and
the JACK server clean up a client that exits.

Positions and counters cross the processes as int64 words in the Fifo's header, each written by one
side only (an aligned 8-byte store is atomic on the machines PortAudio runs on); the DAC time of the
last callback (monotonic: one clock for every process) places each relayed block for knob → heard.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .errors import one_line
from .latency import DacClock
from .ring_buffer import RingBuffer

FIFO_BLOCKS = 2  # blocks the relay keeps queued for the child: one for the callback now, one for the next
HANDSHAKE_S = 8.0  # an attempt that says nothing in this long failed (Python + PortAudio start in ~0.3 s here)
# The header's int64 words: positions and counts, each written by one side only.
W, R, CALLBACKS, XRUNS, STARVED, R_AT_CB = range(6)
T_CB, DELAY = range(2)  # its float64 words: the last callback's monotonic time and its delay to the DAC
_INTS, _FLOATS = 8, 2
_HEADER_BYTES = 8 * (_INTS + _FLOATS)


class Fifo:
    """A single-producer / single-consumer frame queue in a file both processes map: `ints` and `floats`
    (the header, above) and `data`, (capacity, channels) float32 frames."""

    def __init__(self, path: str | Path, channels: int, capacity: int | None = None) -> None:
        self.path = Path(path)
        if capacity is not None:  # the parent makes it
            self.path.write_bytes(bytes(_HEADER_BYTES + 4 * capacity * channels))
        raw = np.memmap(self.path, dtype=np.uint8, mode="r+")
        self.ints = raw[: 8 * _INTS].view(np.int64)
        self.floats = raw[8 * _INTS : _HEADER_BYTES].view(np.float64)
        self.data = raw[_HEADER_BYTES:].view(np.float32).reshape(-1, channels)
        self.capacity = self.data.shape[0]

    def put(self, block: np.ndarray) -> None:
        """Producer: append `block` (frames, channels), which the caller has checked fits."""
        w = int(self.ints[W])
        start, n = w % self.capacity, len(block)
        first = min(n, self.capacity - start)
        self.data[start : start + first] = block[:first]
        self.data[: n - first] = block[first:]
        self.ints[W] = w + n  # published after the frames are in place

    def take_into(self, out: np.ndarray) -> int:
        """Consumer: fill `out` from the queue, zeros past what is there; returns the frames taken."""
        r = int(self.ints[R])
        n = min(len(out), int(self.ints[W]) - r)
        start = r % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.data[start : start + first]
        out[first:n] = self.data[: n - first]
        out[n:] = 0.0
        self.ints[R] = r + n
        return n


def find_device(sd, name: str, host_api: str) -> int | None:
    """The index of the output device `name` under `host_api`, as PortAudio lists it now (None: absent)."""
    hostapis = sd.query_hostapis()
    for info in sd.query_devices():
        if (info["name"] == name and info["max_output_channels"] > 0
                and hostapis[info["hostapi"]]["name"] == host_api):
            return int(info["index"])
    return None


def child_main(argv: list[str]) -> int:
    """The child: `FIFO NAME HOST_API RATE CHANNELS BLOCK` plays; `--probe NAME HOST_API` only looks."""
    out = sys.stdout.buffer
    say = lambda *words: (out.write((" ".join(map(str, words)) + "\n").encode()), out.flush())  # noqa: E731
    probe = argv[0] == "--probe"
    path, name, host_api = (None, *argv[1:3]) if probe else argv[:3]
    try:
        import sounddevice as sd
    except Exception as exc:  # noqa: BLE001 - OSError, PortAudioError: no PortAudio, or it cannot start
        say("absent", one_line(f"PortAudio cannot start: {exc}"))
        return 3
    device = find_device(sd, name, host_api)
    if device is None:
        say("absent", f"no output device {name!r} under {host_api}")
        os._exit(3)  # never Pa_Terminate: a server going away meanwhile would abort it (harmless, but noisy)
    if probe:
        say("present")
        os._exit(0)
    rate, channels, block = (int(x) for x in argv[3:6])
    fifo = Fifo(path, channels)
    ints, floats = fifo.ints, fifo.floats
    wake = sys.stdout.fileno()

    def callback(outdata: np.ndarray, frames: int, time_info, status) -> None:
        ints[CALLBACKS] += 1
        if status.output_underflow:
            ints[XRUNS] += 1
        ints[R_AT_CB] = ints[R]
        floats[T_CB] = time.monotonic()
        floats[DELAY] = time_info.outputBufferDacTime - time_info.currentTime
        if fifo.take_into(outdata) < frames and ints[W]:
            ints[STARVED] += 1  # the relay was late: this block played short
        with contextlib.suppress(OSError):  # BlockingIOError: the relay is not reading; it reads counts anyway
            os.write(wake, b".")

    try:
        stream = sd.OutputStream(samplerate=rate, blocksize=block, device=device, channels=channels,
                                 dtype="float32", latency="low", callback=callback)
        stream.start()
    except Exception as exc:  # noqa: BLE001 - PortAudioError, ValueError: the device refused
        say("absent", one_line(f"cannot open output device {name!r}: {exc}"))
        os._exit(4)
    played = block or max(16, round(float(stream.latency) * rate))  # the JACK period, as the first stream's
    say("ready", played, float(stream.latency))
    os.set_blocking(wake, False)
    while True:  # until the session closes stdin (stopped or gone), or the device goes away
        ready, _, _ = select.select([sys.stdin], [], [], 0.05)
        if ready and not os.read(sys.stdin.fileno(), 64):
            os._exit(0)
        if not stream.active:
            os._exit(5)


class ChildPlayer:
    """The parent's side: `open()` starts a child for device `name` under `host_api` and waits for it to
    play; then a relay thread moves blocks from `ring` into its Fifo, stamping `clock`. `lost` is set (one
    line) once the child stops playing: it exited, or its callbacks stopped for `stall_s`."""

    def __init__(self, ring: RingBuffer, clock: DacClock, name: str, host_api: str, host_block: int,
                 stall_s: float = 1.0) -> None:
        self.ring, self.clock, self.name, self.host_api = ring, clock, name, host_api
        self.host_block, self.stall_s = host_block, stall_s
        self.blocksize, self.latency = host_block, 0.0
        self.lost: str | None = None
        self._proc: subprocess.Popen | None = None
        self._fifo: Fifo | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, stop: threading.Event, timeout: float = HANDSHAKE_S) -> str | None:
        """Start the child; None once it plays, else why not (one line; the child is gone then)."""
        fd, path = tempfile.mkstemp(prefix="musicsteer-out-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.close(fd)
        rate, channels = self.ring.sample_rate, self.ring.channels
        self._fifo = Fifo(path, channels, capacity=8 * max(self.host_block, 4096))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "musicsteer.engine.audio_player", path, self.name, self.host_api,
             str(rate), str(channels), str(self.host_block)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        line, deadline = b"", time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while not line.endswith(b"\n") and not stop.is_set() and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                chunk = os.read(fd, 1)
                if not chunk:
                    break
                line += chunk
        words = line.decode(errors="replace").split(maxsplit=1)
        if words[:1] == ["ready"]:
            block, latency = words[1].split()
            self.blocksize, self.latency = int(block), float(latency) + FIFO_BLOCKS * int(block) / rate
            return None
        self.stop()
        if stop.is_set():
            return "stopped"
        if words[:1] == ["absent"]:
            return words[1].strip()
        return f"no answer from the output process in {timeout:g} s" if not line else one_line(line.decode())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._relay, name="musicsteer-audio-relay", daemon=True)
        self._thread.start()

    @property
    def callbacks(self) -> int:
        return int(self._fifo.ints[CALLBACKS]) if self._fifo is not None else 0

    @property
    def output_underflows(self) -> int:
        """PortAudio's xruns in the child, and blocks the relay was too late for."""
        return int(self._fifo.ints[XRUNS] + self._fifo.ints[STARVED]) if self._fifo is not None else 0

    def _relay(self) -> None:
        """Refill the Fifo after each callback (woken by the child's byte), one ring block at a time."""
        fifo, ring, proc = self._fifo, self.ring, self._proc
        ints, floats, rate = fifo.ints, fifo.floats, self.ring.sample_rate
        block = np.zeros((self.blocksize, ring.channels), np.float32)
        fd = proc.stdout.fileno()
        seen, since = self.callbacks, time.monotonic()
        while not self._stopping.is_set():
            while int(ints[W] - ints[R]) + len(block) <= FIFO_BLOCKS * len(block):
                w, start = int(ints[W]), ring.frames_read
                if floats[T_CB]:  # where the last callback was, and how far behind it this block plays
                    dac = floats[T_CB] + floats[DELAY] + (w - int(ints[R_AT_CB])) / rate
                else:
                    dac = time.monotonic() + (w - int(ints[R])) / rate + self.latency
                self.clock.mark(start, dac)
                ring.read_into(block)
                fifo.put(block)
            if select.select([fd], [], [], 0.05)[0] and not os.read(fd, 4096):
                self.lost = f"output device {self.name!r} stopped playing again: its output process ended"
                return
            now = time.monotonic()
            if self.callbacks != seen:
                seen, since = self.callbacks, now
            elif now - since > self.stall_s:
                self.lost = (f"output device {self.name!r} stopped asking for audio again "
                             f"(no callback for {now - since:.1f} s)")
                return

    def stop(self) -> None:
        """End the relay and the child (never waits on PortAudio: the child is killed if it lingers)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
        if self._fifo is not None:
            with contextlib.suppress(OSError):
                self._fifo.path.unlink()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
