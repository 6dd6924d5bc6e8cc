"""The live genre meter: readings from the activations the decoder already computes, in the log and
to OSC subscribers, and SMITIN-style easing of alpha through the ordinary control queue."""

from __future__ import annotations

import socket
import threading
from functools import partial

import pytest
import torch
from conftest import random_vectors
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from musicsteer.controllers.osc import OscServer
from musicsteer.engine import decoder as decoder_fn
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Applied, MeterReading
from musicsteer.engine.generator import Generator
from musicsteer.engine.graph import GraphGenerator
from musicsteer.engine.meter import GenreMeter
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import read_log


@pytest.mark.parametrize("make", [Generator, partial(GraphGenerator, capture=False)], ids=["eager", "static"])
def test_readings_project_the_unsteered_stream_without_an_extra_pass(tiny, monkeypatch, make) -> None:
    """Eager, the meter reads the forward's own tensor; through the static step (what CUDA captures),
    the copy the step makes of it. Neither runs a second forward."""
    vectors = random_vectors(tiny)
    gen = make(tiny, Controls(prompt="rock", mix={"jazz": 1.0}, alpha=0.5), vectors)
    gen.meter = GenreMeter(vectors, layer=1, every=5)
    readings, seen = [], []
    gen.listeners.add(lambda event: readings.append((event.step, event.scores)) if isinstance(event, MeterReading)
                      else None)
    calls = []
    forward = decoder_fn.forward

    def counting(*args, **kwargs):
        calls.append(1)
        out = forward(*args, **kwargs)
        seen.append(args[6]["unsteered.1"][0, -1].clone())  # what the meter was handed, for the hand check
        return out

    monkeypatch.setattr(decoder_fn, "forward", counting)
    gen.start()
    for _ in range(20):
        gen.step()
    assert len(calls) == 20  # one forward per token, meter or not
    if isinstance(gen, GraphGenerator):
        assert gen.graph.steps == 20  # the meter kept the static step
    assert [step for step, _ in readings] == [4, 9, 14, 19]
    h = torch.stack([v / v.norm() for v in seen[15:20]]).mean(0)
    for label, score in readings[-1][1].items():
        assert score == pytest.approx(float(vectors.direction(label, 1) @ h), abs=1e-3)


def test_ease_at_eases_alpha_off_and_back_through_the_control_queue(tiny) -> None:
    vectors = random_vectors(tiny)
    gen = Generator(tiny, Controls(prompt="rock", mix={"jazz": 1.0}, alpha=0.6), vectors)
    gen.meter = GenreMeter(vectors, every=2, ease_at=-1.0, hold=2, ease_seconds=0.04)  # always "above"
    applied = []
    gen.listeners.add(lambda event: applied.extend((event.step, c.param, c.value) for c in event.changes)
                      if isinstance(event, Applied) else None)
    gen.start()
    for _ in range(12):
        gen.step()
    assert applied and applied[0][1:] == ("alpha", 0.0) and gen.control.values.alpha == 0.0
    gen.meter.ease_at = 1.5  # nothing scores that high: the target has "fallen", alpha returns
    for _ in range(8):
        gen.step()
    assert applied[-1][1:] == ("alpha", 0.6) and gen.control.values.alpha == pytest.approx(0.6)


def test_meter_reaches_the_session_log_and_osc_subscribers(tiny, tmp_path) -> None:
    vectors = random_vectors(tiny)
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.4), vectors)
    gen.meter = GenreMeter(vectors, every=10)
    session = StreamingSession(gen, StreamOptions(seconds=2.0, output_device="null", record=tmp_path / "m.wav"))
    server = OscServer(session, port=0)
    server.start()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    listener.sendto(OscMessageBuilder(address="/musicsteer/subscribe").build().dgram, server.address)
    got: list[OscMessage] = []

    def receive() -> None:
        while not any(m.address == "/musicsteer/meter" for m in got):
            got.append(OscMessage(listener.recvfrom(65536)[0]))

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    session.run()
    thread.join(timeout=10)
    server.stop()
    meter = next(m for m in got if m.address == "/musicsteer/meter")
    assert meter.params[0::2] == vectors.labels and all(isinstance(x, float) for x in meter.params[1::2])
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert sum('"meter"' in line for line in lines) >= 8
    assert read_log(tmp_path / "m.jsonl").changes == []  # readings describe; they are not changes

