"""Knob → heard of `musicsteer play` itself, as a performer runs it: its defaults, a JACK server, OSC.

`python3 -m musicsteer.bench.play_heard --period 256 --json out.json` starts a JACK dummy server
(`jackd -d dummy`, 32 kHz, PERIOD-frame periods; tests/jack.py's recipe), runs `musicsteer play --model
tiny --output-device system` with no latency flags (so `--buffer auto`, `--blocksize auto`) and an OSC
port, moves alpha every 0.5 s (each send moved by up to 40 ms at random) from a real UDP OSC client for
SECONDS, and reads play's own summary
line: knob → heard median and p95, underruns, the device block and lead it chose. Needs jackd
(`apt-get install -y --no-install-recommends libportaudio2 jackd2`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SUMMARY = re.compile(r"underruns (\d+) \(([\d.]+) s\).*?xruns (\d+).*?; (\d+) audio callbacks; (.*?); control values"
                     r".*?knob→heard median (\d+) ms, p95 (\d+) ms \((\d+) changes\)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(period: int, seconds: float = 30.0, every: float = 0.5, rate: int = 32000, model: str = "tiny") -> dict:
    """One play session through a fresh JACK dummy server; the figures its summary line gives."""
    from pythonosc.udp_client import SimpleUDPClient

    jackd = shutil.which("jackd")
    if jackd is None:
        raise SystemExit("jackd is not installed: apt-get install -y --no-install-recommends libportaudio2 jackd2")
    name = f"musicsteer-heard-{os.getpid()}-{period}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1", JACK_NO_AUDIO_RESERVATION="1")
    server = subprocess.Popen([jackd, "--no-realtime", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        time.sleep(1.0)  # the server up before PortAudio looks for it (play names 'system' at once)
        port = free_port()
        play = subprocess.Popen([sys.executable, "-m", "musicsteer", "play", "--model", model, "--output-device",
                                 "system", "--seconds", str(seconds + 5), "--osc-port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        client = SimpleUDPClient("127.0.0.1", port)
        jitter = random.Random(period)
        began = None
        while play.poll() is None:  # α every `every` s from 3 s in (the model is loaded and playing), for `seconds`
            if began is None:
                time.sleep(3.0)
                began, sent = time.monotonic(), 0
            if time.monotonic() - began > seconds:
                break
            client.send_message("/musicsteer/alpha", 0.1 + 0.1 * (sent % 5))
            sent += 1
            # Each send moved by up to two tokens at random (seeded): 0.5 s is exactly 25 tokens and 62.5
            # JACK periods, so a sender locked to the clock meets the token at one phase and shows one latency.
            time.sleep(max(0.0, began + sent * every + jitter.uniform(0.0, 0.04) - time.monotonic()))
        out, err = play.communicate(timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    match = SUMMARY.search(err)
    if play.returncode != 0 or match is None:
        raise SystemExit(f"play failed ({play.returncode}): {err[-2000:]}")
    underruns, gap, xruns, callbacks, buffering, median, p95, changes = match.groups()
    return {"period": period, "rate": rate, "model": model, "seconds": seconds, "every_s": every,
            "heard_median_ms": int(median), "heard_p95_ms": int(p95), "changes": int(changes),
            "underruns": int(underruns), "underrun_s": float(gap), "xruns": int(xruns), "callbacks": int(callbacks),
            "buffering": buffering, "command": "musicsteer play --model tiny --output-device system (no latency flags)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", type=int, action="append", help="JACK period, frames (repeatable; default 256 "
                                                                     "and 1024)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", help="write the reports here")
    args = parser.parse_args(argv)
    reports = [measure(period, args.seconds) for period in args.period or (256, 1024)]
    print(json.dumps(reports, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
