"""Two-way OSC over real UDP on 127.0.0.1, against a real streaming session on the tiny model (null device):
every applied change, from any source, is echoed on its control's own address to subscribers and to
`--osc-feedback` targets; presets are recalled and saved over OSC. The feedback listener of the last
test is liblo's `oscdump`, a client nobody here wrote.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest
import yaml
from conftest import random_vectors
from test_osc import Client, until

from musicsteer.controllers.mappings import Preset
from musicsteer.controllers.osc import OscServer
from musicsteer.controllers.presets import PresetBank, load_presets
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions

LAYER = 1


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """A running session with OSC on a free port, a preset bank saving to a file, and a feedback target
    (a plain UDP socket standing for a surface's own port)."""
    surface = Client(("127.0.0.1", 9), bind="127.0.0.1")  # never sends: it only listens, as a surface's port
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2), random_vectors(tiny, best_layer=LAYER))
    session = StreamingSession(gen, StreamOptions(output_device="null"))
    folder = tmp_path_factory.mktemp("presets")
    bank = PresetBank(session.control, {"calm": Preset("calm", {"jazz": 1.0}, 0.1, (LAYER,), "residual")},
                      folder / "presets.yaml")
    server = OscServer(session, port=0, status_interval=0.2, feedback=[surface.sock.getsockname()], presets=bank)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    server.start()
    until(lambda: session.step > 10, what="the session to start generating")
    yield session, server, surface, bank
    server.stop()
    session.stop()
    runner.join(timeout=30)
    surface.close()
    assert session.error is None and session.listeners.errors == 0


def test_a_feedback_target_starts_in_sync_and_follows_changes_from_every_source(served) -> None:
    session, server, surface, _ = served
    first = surface.wait("/musicsteer/alpha")  # the state at start, unasked
    assert first[0] == [pytest.approx(0.2)] and surface.wait("/musicsteer/mix")[0] == ["rock", 1.0]
    assert surface.wait("/musicsteer/layer")[0] == [LAYER] and surface.wait("/musicsteer/site")[0] == ["residual"]
    client = Client(server.address)
    client.send("/musicsteer/alpha", 0.7, 0.5)  # from another OSC client, gliding: the target is echoed
    until(lambda: [pytest.approx(0.7)] in surface.replies("/musicsteer/alpha"), what="alpha echoed")
    session.control.submit(Change("guidance", 4.5))  # as MIDI, the web page or automation submit
    until(lambda: [4.5] in surface.replies("/musicsteer/guidance"), what="guidance echoed")
    client.send("/musicsteer/steer", "jazz")  # steer s is echoed on the mix's own address
    until(lambda: ["jazz", 1.0] in surface.replies("/musicsteer/mix"), what="mix echoed")
    client.send("/musicsteer/layer", 0, 1)
    until(lambda: [0, 1] in surface.replies("/musicsteer/layer"), what="layers echoed")
    client.send("/musicsteer/alpha", 99.0)  # clamped: the surface shows what was applied
    until(lambda: [10.0] in surface.replies("/musicsteer/alpha"), what="the clamped alpha echoed")
    assert client.wait("/musicsteer/clamped")[0] == ["alpha", 10.0, 99.0]
    client.send("/musicsteer/alpha", 0.3)
    client.send("/musicsteer/layer", LAYER)
    client.close()


def test_subscribers_get_the_values_on_their_own_addresses(served) -> None:
    session, server, _, _ = served
    subscriber = Client(server.address)
    subscriber.send("/musicsteer/subscribe")
    assert subscriber.wait("/musicsteer/temperature")[0] == [pytest.approx(session.control.values.temperature)]
    session.control.submit(Change("temperature", 0.8))
    until(lambda: [pytest.approx(0.8)] in subscriber.replies("/musicsteer/temperature"), what="temperature echo")
    subscriber.close()


def test_presets_are_recalled_and_saved_over_osc(served) -> None:
    session, server, surface, bank = served
    client = Client(server.address)
    client.send("/musicsteer/preset", "calm")
    until(lambda: session.control.values.mix == {"jazz": 1.0} and session.control.values.alpha == pytest.approx(0.1),
          what="the preset recalled")
    until(lambda: ["jazz", 1.0] in surface.replies("/musicsteer/mix"), what="the recall echoed")
    client.send("/musicsteer/mix", "rock", 0.5, "classical", 0.5)
    client.send("/musicsteer/alpha", 0.4)
    until(lambda: session.control.values.mix == {"rock": 0.5, "classical": 0.5}, what="the mix applied")
    until(lambda: session.control.values.alpha == pytest.approx(0.4, abs=1e-6), what="alpha applied")
    client.send("/musicsteer/preset/save", "fusion", 2.0)
    assert client.wait("/musicsteer/preset/saved")[0] == ["fusion"]
    until(lambda: bank.path.exists() and "fusion" in load_presets(bank.path), what="the writer thread's write")
    saved = load_presets(bank.path)["fusion"]  # written to the file, in the config's format
    assert (saved.mix, saved.alpha, saved.layer, saved.seconds) == ({"rock": 0.5, "classical": 0.5},
                                                                     pytest.approx(0.4), (LAYER,), 2.0)
    assert set(yaml.safe_load(bank.path.read_text())["presets"]) == {"calm", "fusion"}
    for bad in (("/musicsteer/preset", "nope"), ("/musicsteer/preset", 3), ("/musicsteer/preset/save", ""),
                ("/musicsteer/preset/save", "x", "y"), ("/musicsteer/preset/save", "x" * 65)):
        count = len(client.replies("/musicsteer/error"))
        client.send(*bad)
        client.wait("/musicsteer/error", count + 1)
    assert "unknown preset 'nope'" in client.replies("/musicsteer/error")[0][0]
    client.close()


def test_a_feedback_target_that_is_the_server_itself_is_refused(served) -> None:
    session, server, _, _ = served
    port = free_udp_port()
    with pytest.raises(MusicsteerError, match="own address"):
        OscServer(session, port=port, feedback=[("127.0.0.1", port)]).stop()
    with pytest.raises(MusicsteerError, match="feedback target"):
        OscServer(session, port=0, feedback=[("no-such-host.invalid", 9)]).stop()


def test_oscdump_as_the_listening_surface_sees_a_change_from_another_client(served) -> None:
    """liblo's oscdump (apt liblo-tools) listens where --osc-feedback points; another client changes alpha.
    oscdump prints `TIMETAG /address types args…` per message."""
    oscdump = shutil.which("oscdump")
    assert oscdump, "oscdump is not installed (apt-get install liblo-tools): scripts/test installs it"
    session, server, _, _ = served
    port = free_udp_port()
    dump = subprocess.Popen([oscdump, "-L", str(port)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(dump.stdout.readline, "")), daemon=True)
    reader.start()
    until(lambda: not port_free(port), what="oscdump to listen")
    target = OscServer(session, port=0, feedback=[("127.0.0.1", port)])  # a second server with the target
    target.start()
    try:
        until(lambda: any(line.split()[1:3] == ["/musicsteer/alpha", "f"] for line in list(lines)),
              what="oscdump's first line")
        client = Client(server.address)
        client.send("/musicsteer/alpha", 0.625)
        until(lambda: any(line.split()[1:] == ["/musicsteer/alpha", "f", "0.625000"] for line in list(lines)),
              what="alpha 0.625 in oscdump's output")
        client.close()
    finally:
        target.stop()
        dump.terminate()
        dump.wait(timeout=5)


def test_the_open_stage_control_layout_is_generated_from_the_table_and_listens_on_echo_addresses() -> None:
    """The shipped layout is what examples/make_open_stage_control.py writes, and each widget that shows a
    value sits on an address the engine echoes values on (a row's first OSC address)."""
    import json
    import runpy
    from pathlib import Path

    from musicsteer.engine.params import LIVE

    root = Path(__file__).resolve().parent.parent
    maker = runpy.run_path(str(root / "examples" / "make_open_stage_control.py"))
    shipped = json.loads((root / "examples" / "open-stage-control.json").read_text(encoding="utf-8"))
    assert shipped == maker["layout"](), "examples/open-stage-control.json is stale: run make_open_stage_control.py"
    echoed = {f"/musicsteer/{row.osc[0]}" for row in LIVE.values()}
    shows = [w for w in shipped["content"]["widgets"] if w["type"] in ("fader", "knob", "switch", "input")]
    assert {w["address"] for w in shows} <= echoed and len(shows) >= 6


def test_two_engines_fed_each_other_s_echoes_settle_instead_of_trading_forever(served) -> None:
    """From a hostile review: A's feedback to B's port and B's to A's once traded ~1,900 refusals a second.
    Echoes leave from a socket that reads nothing, output addresses arriving are ignored unanswered, and
    a value already echoed is not echoed again: one change, then silence."""
    session, _, _, _ = served
    port_a, port_b = free_udp_port(), free_udp_port()
    a = OscServer(session, port=port_a, feedback=[("127.0.0.1", port_b)])
    b = OscServer(session, port=port_b, feedback=[("127.0.0.1", port_a)])
    a.start()
    b.start()
    try:
        time.sleep(1.0)  # each tells the other every value at its start (both applied): let that cross first
        client = Client(a.address)
        client.send("/musicsteer/alpha", 0.4375)
        until(lambda: session.control.values.alpha == pytest.approx(0.4375), what="the change applied")
        time.sleep(1.0)  # five status intervals each way: statuses, changed, meter and echoes cross
        settled = len(session.applied), a.counters["errors"], b.counters["errors"]
        time.sleep(1.0)
        assert (len(session.applied), a.counters["errors"], b.counters["errors"]) == settled
        assert settled[1:] == (0, 0) and a.counters["ignored"] > 0 and b.counters["ignored"] > 0
        client.close()
    finally:
        a.stop()
        b.stop()


def test_saved_presets_are_written_off_the_serving_thread_once_a_burst(served, tmp_path) -> None:
    """A flood of saves once rewrote the file hundreds of times a second on the OSC thread (95 s without a
    pong, 23 underruns): now a save is a dict update and the writer thread writes a burst once."""
    session, server, _, bank = served
    client = Client(server.address)
    writes = bank.writes
    began = time.monotonic()
    for i in range(500):
        client.send("/musicsteer/preset/save", f"p{i % 7}")
    client.send("/musicsteer/ping", 1)
    assert client.wait("/musicsteer/pong")[0] == [1] and time.monotonic() - began < 2
    until(lambda: bank.writes > writes and "p6:" in bank.path.read_text(), what="the burst written")
    time.sleep(0.6)
    assert bank.writes - writes <= 4  # (a write every 0.25 s at most)
    client.close()


def test_a_presets_file_is_its_own(tmp_path) -> None:
    """--presets rewrites its file with presets only, so a whole config is refused (it lost its midi:
    section); an empty file (`touch presets.yaml`) is a start with none."""
    empty = tmp_path / "empty.yaml"
    empty.touch()
    assert load_presets(empty) == {}
    full = tmp_path / "full.yaml"
    full.write_text("midi:\n  port: 0\npresets:\n  a: {mix: rock, alpha: 0.5}\n")
    with pytest.raises(MusicsteerError, match="holds more than presets"):
        load_presets(full)
