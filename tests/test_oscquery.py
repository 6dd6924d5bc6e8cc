"""OSCQuery over real HTTP on 127.0.0.1 (urllib), and its zeroconf announcement found by zeroconf's own
ServiceBrowser over real multicast on the loopback interface. Nothing is mocked: the values come from a
dict the test changes, or from a real engine ControlState applying changes at token boundaries.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import torch
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

from musicsteer.controllers.feedback import current_values
from musicsteer.controllers.osc import ADDRESSES, PREFIX, SESSION_COMMANDS
from musicsteer.controllers.oscquery import COMMANDS, OscQueryService
from musicsteer.engine.control import Controls, ControlState
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change
from musicsteer.engine.params import LIVE, OSC_ADDRESSES, SITES
from musicsteer.engine.vectors import SteeringVectors

OSC = ("127.0.0.1", 9123)  # where the (absent) OSC server would listen: only advertised, never contacted


def get(service: OscQueryService, path: str) -> tuple[int, Any]:
    """(HTTP status, the JSON body or the text) of GET path on the service, over real HTTP."""
    url = f"http://127.0.0.1:{service.address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = reply.read().decode()
            return reply.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def leaves(node: dict) -> dict[str, dict]:
    """{FULL_PATH: node} of every node of a namespace reply, containers included."""
    out = {node["FULL_PATH"]: node}
    for child in node.get("CONTENTS", {}).values():
        out |= leaves(child)
    return out


@pytest.fixture
def values() -> dict[str, Any]:
    return {"prompt": "lofi", "seed": 7, "guidance": 3.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0,
            "alpha": 0.5, "mix": {"jazz": 1.0}, "layer": [1], "site": "residual"}


@pytest.fixture
def service(values: dict[str, Any]):
    threads = set(threading.enumerate())
    service = OscQueryService(OSC, "127.0.0.1", 0, lambda: values, advertise=False)
    service.start()
    yield service
    service.stop()
    assert set(threading.enumerate()) <= threads, "stop() left threads running"


def test_every_osc_address_is_described(service: OscQueryService) -> None:
    status, root = get(service, "/")
    assert status == 200
    nodes = leaves(root)
    assert set(ADDRESSES) <= set(nodes)
    for address in ADDRESSES:
        node = nodes[address]
        assert node["FULL_PATH"] == address and node["DESCRIPTION"]
        assert node["ACCESS"] in (2, 3)
        if node["ACCESS"] == 3:  # one VALUE entry per type tag
            assert len(node["VALUE"]) == len(node["TYPE"])
    for address, row in OSC_ADDRESSES.items():  # readable exactly where the row's value is told (its first)
        assert nodes[f"{PREFIX}/{address}"]["ACCESS"] == (3 if address == row.osc[0] else 2)
        assert row.help in nodes[f"{PREFIX}/{address}"]["DESCRIPTION"]
    for command in SESSION_COMMANDS:
        assert nodes[f"{PREFIX}/{command}"]["ACCESS"] == 2
    # the types surfaces build widgets from: the shortest form each address accepts
    types = {path.removeprefix(PREFIX + "/"): node.get("TYPE") for path, node in nodes.items()}
    assert {k: types[k] for k in ("prompt", "seed", "guidance", "topk", "alpha", "mix", "steer", "morph",
                                  "layer", "site", "preset", "preset/save", "record/start", "subscribe")} == {
        "prompt": "s", "seed": "i", "guidance": "f", "topk": "i", "alpha": "f", "mix": "sf", "steer": "s",
        "morph": "sf", "layer": "i", "site": "s", "preset": "s", "preset/save": "s", "record/start": None,
        "subscribe": None}
    alpha = nodes[f"{PREFIX}/alpha"]
    assert alpha["RANGE"] == [{"MIN": -10, "MAX": 10}] and alpha["CLIPMODE"] == ["both"]
    assert "f [ramp_s]" in alpha["DESCRIPTION"]  # the optional glide time, as the table writes it
    assert nodes[f"{PREFIX}/site"]["RANGE"] == [{"VALS": list(SITES)}]
    assert nodes[f"{PREFIX}/topk"]["RANGE"] == [{"MIN": LIVE["top_k"].low, "MAX": LIVE["top_k"].high}]
    assert nodes[f"{PREFIX}/morph"]["RANGE"] == [None, {"MIN": 0, "MAX": 3600}]  # name, glide seconds
    assert "RANGE" not in nodes[f"{PREFIX}/prompt"]
    # a node both takes messages and holds others: /musicsteer/preset and /musicsteer/preset/save
    assert set(nodes[f"{PREFIX}/preset"]["CONTENTS"]) == {"save"}


def test_every_session_command_has_a_description() -> None:
    assert set(COMMANDS) == set(SESSION_COMMANDS)


def test_one_node_and_one_attribute(service: OscQueryService) -> None:
    status, alpha = get(service, f"{PREFIX}/alpha")
    assert status == 200 and alpha["FULL_PATH"] == f"{PREFIX}/alpha" and alpha["VALUE"] == [0.5]
    assert "CONTENTS" not in alpha
    assert get(service, f"{PREFIX}/alpha?VALUE") == (200, {"VALUE": [0.5]})
    assert get(service, f"{PREFIX}/alpha?RANGE") == (200, {"RANGE": [{"MIN": -10, "MAX": 10}]})
    assert get(service, f"{PREFIX}/site?TYPE") == (200, {"TYPE": "s"})
    assert get(service, f"{PREFIX}/subscribe?VALUE")[0] == 204  # write-only: no value
    assert get(service, f"{PREFIX}/nothing")[0] == 404


def test_value_follows_values(service: OscQueryService, values: dict[str, Any]) -> None:
    values |= {"alpha": -2.25, "prompt": "ambient drone", "site": "attention"}
    root = leaves(get(service, "/")[1])
    assert root[f"{PREFIX}/alpha"]["VALUE"] == [-2.25]
    assert root[f"{PREFIX}/prompt"]["VALUE"] == ["ambient drone"]
    assert root[f"{PREFIX}/site"]["VALUE"] == ["attention"]
    values["mix"] = {"jazz": 0.25, "rock": 0.75}  # a repeated form: as many pairs as the mix holds
    mix = get(service, f"{PREFIX}/mix")[1]
    assert (mix["TYPE"], mix["VALUE"]) == ("sfsf", ["jazz", 0.25, "rock", 0.75])
    assert mix["RANGE"] == [None, {"MIN": -10, "MAX": 10}] * 2 and mix["CLIPMODE"] == ["none", "both"] * 2
    values["layer"] = [1, 3]
    assert get(service, f"{PREFIX}/layer")[1]["TYPE"] == "ii"
    values |= {"mix": {}, "layer": [], "alpha": None}  # no value yet: nulls, one repeat
    assert get(service, f"{PREFIX}/mix?VALUE")[1] == {"VALUE": [None, None]}
    assert get(service, f"{PREFIX}/layer?VALUE")[1] == {"VALUE": [None]}
    assert get(service, f"{PREFIX}/alpha?VALUE")[1] == {"VALUE": [None]}


def test_host_info(service: OscQueryService) -> None:
    status, info = get(service, "/?HOST_INFO")
    assert status == 200
    assert info["NAME"] == "musicsteer" and info["OSC_IP"] == "127.0.0.1" and info["OSC_PORT"] == OSC[1]
    assert info["OSC_TRANSPORT"] == "UDP"
    assert info["EXTENSIONS"]["VALUE"] and info["EXTENSIONS"]["RANGE"] and not info["EXTENSIONS"]["LISTEN"]
    # OSC on every interface: no OSC_IP, so a client uses the address it reached the HTTP server on
    with OscQueryService(("0.0.0.0", 9000), "127.0.0.1", 0, dict, advertise=False) as other:
        assert "OSC_IP" not in get(other, "/?HOST_INFO")[1]


def test_read_only_and_robust(service: OscQueryService, values: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{service.address[1]}/musicsteer/alpha"
    for method in ("POST", "PUT", "HEAD"):  # HEAD: the library's base class would look up files
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method=method), timeout=5)
        assert info.value.code in (405, 501)
    assert get(service, "/?NOT_AN_ATTRIBUTE")[0] == 400
    values["alpha"] = object()  # values() yields what JSON cannot hold: a failed request, not a dead server
    assert get(service, f"{PREFIX}/alpha") == (500, "internal error (TypeError)") and service.errors == 1
    del values["alpha"]
    with socket.create_connection(service.address) as sock:  # a client that sends half a request, then goes
        sock.sendall(b"GET /musicsteer HTTP/1.1\r\n")
    assert get(service, f"{PREFIX}/alpha?VALUE") == (200, {"VALUE": [None]})


def test_values_that_fail_answer_500(values: dict[str, Any]) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("session gone\nsecond line")

    with OscQueryService(OSC, "127.0.0.1", 0, broken, advertise=False) as service:
        status, text = get(service, f"{PREFIX}/alpha")
        assert status == 500 and text == "cannot read the current values: session gone second line"
        assert get(service, "/?HOST_INFO")[0] == 500  # (values are read first, whatever is asked)


def test_bind_errors_are_one_line() -> None:
    with OscQueryService(OSC, "127.0.0.1", 0, dict, advertise=False) as first:
        taken = OscQueryService(OSC, "127.0.0.1", first.address[1], dict, advertise=False)
        with pytest.raises(MusicsteerError, match=rf"^OSCQuery port {first.address[1]} on 127.0.0.1 is in use$"):
            taken.start()
        taken.stop()
    with pytest.raises(MusicsteerError, match=r"^OSCQuery host 192\.0\.2\.254 is not an address of this machine$"):
        OscQueryService(OSC, "192.0.2.254", 0, dict, advertise=False).start()
    with pytest.raises(MusicsteerError, match=r"^OSCQuery port must be at least 0 and at most 65535, got 70000$"):
        OscQueryService(OSC, "127.0.0.1", 70000, dict)


def test_values_of_a_real_control_state() -> None:
    """The values the engine holds: changes submitted, applied at token boundaries, a morph on its way."""
    vectors = SteeringVectors.create({k: torch.randn(4, 8) for k in ("jazz", "rock")}, model="tiny",
                                     method="random", best_layer=2)
    control = ControlState(Controls(alpha=0.5), vectors, num_layers=4, steps_per_second=50.0,
                           slew=0.0)  # the values, not the glide: an alpha lands at the next token
    with OscQueryService(OSC, "127.0.0.1", 0, lambda: current_values(control.values), advertise=False) as service:
        assert get(service, f"{PREFIX}/layer?VALUE")[1] == {"VALUE": [2]}  # the vectors file's best layer
        control.submit(Change("alpha", 3.0))
        assert get(service, f"{PREFIX}/alpha?VALUE")[1] == {"VALUE": [0.5]}  # not applied before the token
        control.apply_due(0)
        assert get(service, f"{PREFIX}/alpha?VALUE")[1] == {"VALUE": [3.0]}
        control.submit(Change("mix", {"jazz": 1.0}))
        control.apply_due(1)
        control.submit(Change("mix", {"rock": 1.0}, seconds=0.04))  # a morph over 2 tokens
        control.apply_due(2)
        mix = get(service, f"{PREFIX}/mix")[1]
        assert (mix["TYPE"], mix["VALUE"]) == ("sfsf", ["jazz", 0.5, "rock", 0.5])  # half way
        control.apply_due(3)
        assert get(service, f"{PREFIX}/mix?VALUE")[1] == {"VALUE": ["rock", 1.0]}


class Found(ServiceListener):
    def __init__(self) -> None:
        self.added: set[str] = set()
        self.removed: set[str] = set()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.added.add(name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.removed.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass


def until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_zeroconf_announces_and_says_goodbye() -> None:
    """Real mDNS on the loopback interface (the CLI's default OSC host): a browser on another Zeroconf
    instance finds both services, resolves them to this server's ports, and sees them leave on stop()."""
    threads = set(threading.enumerate())
    name = f"musicsteer-test-{os.getpid()}"  # unique: other machines on a network may run tests too
    browser_zc = Zeroconf(interfaces=["127.0.0.1"])
    found = Found()
    browser = ServiceBrowser(browser_zc, ["_oscjson._tcp.local.", "_osc._udp.local."], found)
    try:
        started = time.monotonic()
        service = OscQueryService(OSC, "127.0.0.1", 0, dict, name=name)
        service.start()
        assert time.monotonic() - started < 0.5  # zeroconf probing (seconds) does not hold start-up
        assert get(service, "/?HOST_INFO")[1]["NAME"] == name  # HTTP answers while zeroconf probes
        wanted = {f"{name}._oscjson._tcp.local.", f"{name}._osc._udp.local."}
        assert until(lambda: wanted <= found.added), (found.added, service.advertise_error)
        assert until(lambda: len(service.announced) == 2)  # (register_service returns after its announcements)
        assert sorted(service.announced) == sorted(wanted) and service.advertise_error is None
        http = browser_zc.get_service_info("_oscjson._tcp.local.", f"{name}._oscjson._tcp.local.", timeout=3000)
        osc = browser_zc.get_service_info("_osc._udp.local.", f"{name}._osc._udp.local.", timeout=3000)
        assert http is not None and osc is not None
        assert (http.parsed_addresses(), http.port) == (["127.0.0.1"], service.address[1])
        assert (osc.parsed_addresses(), osc.port) == (["127.0.0.1"], OSC[1])
        service.stop()
        assert until(lambda: wanted <= found.removed), found.removed  # goodbye packets, not a TTL expiry
    finally:
        browser.cancel()
        browser_zc.close()
    assert until(lambda: set(threading.enumerate()) <= threads, 5), set(threading.enumerate()) - threads


def test_stop_while_zeroconf_probes() -> None:
    threads = set(threading.enumerate())
    service = OscQueryService(OSC, "127.0.0.1", 0, dict, name=f"musicsteer-stop-{os.getpid()}")
    service.start()
    started = time.monotonic()
    service.stop()  # at once: the announcing thread is mid-probe
    service.stop()  # idempotent
    assert time.monotonic() - started < 5
    assert until(lambda: set(threading.enumerate()) <= threads, 5), set(threading.enumerate()) - threads


def test_slow_clients_are_bounded_and_never_hold_the_end_of_a_session(capfd) -> None:
    """From a hostile review: 200 clients trickling a byte every 3 s made 212 threads and held stop() for
    108 s. Now at most MAX_CLIENTS are served at once, each request has REQUEST_SECONDS, stop() cuts
    the rest; and a request the library cannot answer writes nothing to stderr."""
    from musicsteer.controllers import oscquery_http as oscquery

    service = OscQueryService(OSC, "127.0.0.1", 0, dict, advertise=False)
    service.start()
    base = threading.active_count()
    slow = []
    for _ in range(oscquery.MAX_CLIENTS + 20):
        sock = socket.create_connection(service.address)
        sock.sendall(b"G")  # a request begun, never finished
        slow.append(sock)
    time.sleep(0.5)
    assert threading.active_count() <= base + 2 * oscquery.MAX_CLIENTS  # a request thread and its deadline each
    began = time.monotonic()
    service.stop()
    assert time.monotonic() - began < 3
    for sock in slow:
        sock.close()
    with OscQueryService(OSC, "127.0.0.1", 0, dict, advertise=False) as fresh:
        for _ in range(5):
            assert get(fresh, "/musicsteer/alpha?BOGUS")[0] == 400
    assert "not understood" not in capfd.readouterr().err
