"""Perform a classical -> electronic -> jazz morph over OSC against a running `musicsteer play`.

    musicsteer play --model facebook/musicgen-small --vectors genres.safetensors --steer classical \
        --alpha 0.3 --prompt "an orchestral piece" --record set.wav          # in one terminal
    python examples/osc_morph.py --port 9000                                 # in another

It pings the engine first (and exits with a clear message if nothing answers), subscribes to its
feedback, then plays a short score of timed OSC messages. The labels must exist in the vectors file.
Every message it sends renews the subscription (the engine drops a subscriber it has not heard from for
60 s): a score with longer silences would send /musicsteer/subscribe (or ping) again within them.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

SCORE = [  # (seconds from start, address, arguments)
    (0.0, "/musicsteer/alpha", [0.3]),
    (4.0, "/musicsteer/alpha", [0.5]),
    (8.0, "/musicsteer/morph", ["electronic", 6.0]),   # glide classical -> electronic over 6 s
    (16.0, "/musicsteer/alpha", [0.65]),
    (24.0, "/musicsteer/mix", ["electronic", 0.5, "jazz", 0.5]),  # genre fusion
    (30.0, "/musicsteer/morph", ["jazz", 8.0]),
    (40.0, "/musicsteer/alpha", [0.4]),
    (46.0, "/musicsteer/record/stop", []),
]


def message(address: str, args: list) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--speed", type=float, default=1.0, help="play the score faster (>1) or slower")
    args = parser.parse_args()
    engine = (args.host, args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))  # replies come back to this port
    sock.settimeout(2.0)
    sock.sendto(message("/musicsteer/ping", []), engine)
    try:
        reply = OscMessage(sock.recvfrom(65536)[0])
    except TimeoutError:
        print(f"no answer from musicsteer at {args.host}:{args.port}: is `musicsteer play` running?", file=sys.stderr)
        return 1
    print(f"engine answered {reply.address}")
    sock.sendto(message("/musicsteer/subscribe", []), engine)
    sock.settimeout(0.05)
    start = time.monotonic()
    for at, address, values in SCORE:
        while time.monotonic() - start < at / args.speed:
            try:
                feedback = OscMessage(sock.recvfrom(65536)[0])
                if feedback.address != "/musicsteer/status":
                    print(f"  <- {feedback.address} {feedback.params}")
            except (TimeoutError, BlockingIOError):
                pass
        print(f"{at:5.1f}s -> {address} {values}")
        sock.sendto(message(address, values), engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
