"""`musicsteer play` with every surface that follows the engine, through the real CLI in a subprocess:
--osc-feedback to liblo's oscdump, --oscquery read over HTTP, --midi-out to a JACK virtual MIDI port,
--presets saved over OSC. One change from an OSC client must reach all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import mido
from test_osc import Client, until
from test_osc_feedback import free_udp_port, port_free


def test_one_osc_change_reaches_oscdump_oscquery_and_a_midi_controller(jack_midi: str, vectors_file: str,
                                                                       tmp_path) -> None:
    oscdump = shutil.which("oscdump")
    assert oscdump, "oscdump is not installed (apt-get install liblo-tools): scripts/test installs it"
    leds: list[mido.Message] = []
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    sink = backend.open_input("controller-leds", virtual=True, callback=leds.append)  # the controller's input
    dump_port = free_udp_port()
    dump = subprocess.Popen([oscdump, "-L", str(dump_port)], stdout=subprocess.PIPE, text=True)
    dumped: list[str] = []
    threading.Thread(target=lambda: dumped.extend(iter(dump.stdout.readline, "")), daemon=True).start()
    until(lambda: not port_free(dump_port), what="oscdump to listen")
    config = tmp_path / "session.yaml"
    config.write_text("midi:\n  api: jack\n  output: controller-leds\n"
                      "  mappings:\n    - {cc: 7, channel: 2, param: alpha, min: 0.0, max: 1.0}\n")
    presets = tmp_path / "presets.yaml"
    play = subprocess.Popen(
        [sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--output-device", "null", "--seconds", "120",
         "--vectors", vectors_file, "--steer", "rock", "--alpha", "0.2", "--osc-port", "0", "--no-status",
         "--osc-feedback", f"127.0.0.1:{dump_port}", "--oscquery", "0", "--presets", str(presets),
         "--config", str(config)], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=os.environ.copy())
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(play.stderr.readline, "")), daemon=True).start()
    try:
        until(lambda: any(line.startswith("MIDI feedback to") for line in lines) or play.poll() is not None,
              timeout=120, what="play to open every surface")
        assert play.poll() is None, "".join(lines)
        osc_port = int(next(line for line in lines if line.startswith("listening for OSC")).split(":")[-1])
        query = next(line for line in lines if line.startswith("OSCQuery on")).split()[2]
        until(lambda: leds and leds[0].control == 7 and leds[0].value == round(0.2 * 127), what="the LEDs in sync")
        client = Client(("127.0.0.1", osc_port))
        client.send("/musicsteer/alpha", 0.75)
        until(lambda: any(line.split()[1:] == ["/musicsteer/alpha", "f", "0.750000"] for line in list(dumped)),
              what="oscdump to see the change")
        until(lambda: any(m.control == 7 and m.channel == 1 and m.value == round(0.75 * 127) for m in list(leds)),
              what="the controller's LED ring to follow")
        # OSCQuery reports the applied value, which glides to 0.75 over --slew (50 ms of audio: as long on
        # the wall clock now that --buffer auto makes each token when it is needed)
        until(lambda: json.load(urllib.request.urlopen(f"{query}musicsteer/alpha?VALUE", timeout=5))
              == {"VALUE": [0.75]}, what="OSCQuery to report the new alpha")
        client.send("/musicsteer/preset/save", "mine")
        assert client.wait("/musicsteer/preset/saved")[0] == ["mine"]
        until(lambda: presets.exists() and "mine:" in presets.read_text(), what="the presets file written")
        client.close()
    finally:
        play.terminate()
        play.wait(timeout=60)
        time.sleep(0.2)
        dump.terminate()
        dump.wait(timeout=5)
        sink.close()
    assert play.returncode in (0, 130) and not any("Traceback" in line for line in lines), "".join(lines)
