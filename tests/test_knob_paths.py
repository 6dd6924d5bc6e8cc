"""No knob is dropped on its way in: every row of the parameter table, set to a valid value that is not its
default, through every start-up path (the CLI flags of render and play, a config's `defaults:`, automation
at t = 0, a replayed session log, the library call; eval's sampler flags), is what the generator holds
afterwards: read back from its control state, its settings and, for the sampler's rows, the captured step's
buffers (--decode graph; on the CPU the same static step, uncaptured). Table-driven: a new row is covered
without an edit here. (A flag parsed but then replaced by the table's default was possible until the CLI derived
`Controls` from the table.)

The generator a command builds is read through a subclass registered as the "graph" token loop (a spy:
it records the instance and changes nothing), so the commands run exactly as a user's would."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import yaml
from conftest import random_vectors

from musicsteer.cli import main
from musicsteer.engine.control import Controls, controls_of
from musicsteer.engine.generator import Generator
from musicsteer.engine.graph import GENERATORS, GraphGenerator
from musicsteer.engine.params import LIVE, SAMPLER, SETTINGS, Param
from musicsteer.engine.sampling import Sampler, sampler_of

TINY = ["--model", "tiny", "--device", "cpu", "--decode", "graph"]
# Settings rows a generator takes (the slew, the steering rule, the window): a flag that sets one must reach it.
GEN_SETTINGS = [row for row in SETTINGS if row.name in inspect.signature(Generator).parameters and row.cli]


def other_value(row: Param, default: Any, layers: int, labels: list[str]) -> Any:
    """A valid value of `row` other than `default` (what a generator holds when nothing sets it), in the
    engine's type. Layers are bounded by the model (`layers`), mixes name its vectors (`labels`)."""
    if row.kind == "text":
        return "knob path test"
    if row.kind == "choice":
        return next(c for c in row.choices if c != default)
    if row.kind == "mix":
        return {labels[0]: 0.5, labels[1]: 0.5}
    low, high = row.span or (row.low, layers - 1 if row.many else row.high)  # (a layer: the model's)
    for share in (0.37, 0.63, 0.0, 1.0):
        value = low + share * (high - low)
        value = round(value) if row.kind == "whole" else round(value, 3)
        if row.low_open and value <= row.low:
            continue
        value = (value,) if row.many else value
        if value != default:
            return value
    raise AssertionError(f"no value for {row.name} other than {default!r}")


class Spy(GraphGenerator):
    made: list[GraphGenerator] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Spy.made.append(self)


@pytest.fixture
def setup(tiny, tmp_path, monkeypatch):
    """(the values to set, by row name; the vectors file; a function running argv and returning its generator)."""
    vectors = random_vectors(tiny)
    path = str(vectors.save(tmp_path / "vectors.safetensors"))
    defaults = Generator(tiny, Controls(), vectors)  # what each row holds when nothing sets it
    values = {row.name: other_value(row, getattr(defaults.control.values, row.status), tiny.num_layers,
                                    vectors.labels) for row in LIVE.values()}
    values |= {row.name: other_value(row, row.default, tiny.num_layers, vectors.labels) for row in GEN_SETTINGS}
    monkeypatch.setitem(GENERATORS, "graph", Spy)
    Spy.made = []

    def run(*argv: str) -> GraphGenerator:
        assert main(list(argv)) == 0
        assert len(Spy.made) == 1
        return Spy.made.pop()
    return values, path, run


def flag(row: Param, value: Any) -> list[str]:
    if row.kind == "mix":
        return [row.cli, ",".join(f"{name}={weight}" for name, weight in value.items())]
    return [row.cli, ",".join(map(str, value)) if row.many else str(value)]


def yaml_values(values: dict[str, Any], rows: list[Param]) -> dict[str, Any]:
    """By each row's YAML key, in plain YAML types."""
    return {row.keys[0]: list(values[row.name]) if row.many else values[row.name] for row in rows}


def assert_reached(gen: GraphGenerator, values: dict[str, Any], rows: list[Param]) -> None:
    assert gen.graph.steps > 0, "the captured step never ran"
    for row in rows:
        if row.name in LIVE:
            assert getattr(gen.control.values, row.status) == values[row.name], row.name
            if row.name in SAMPLER:  # the buffers the captured step reads
                assert getattr(gen.graph.sampler, row.name) == values[row.name], row.name
        else:
            assert gen.settings[row.name] == values[row.name], row.name
    if "slew" in values and any(row.name == "slew" for row in rows):
        assert gen.control.slew == values["slew"]


def cli_flags(values: dict[str, Any], rows: list[Param]) -> list[str]:
    return [part for row in rows for part in flag(row, values[row.name])]


def test_cli_flags_of_render_reach_the_generator(setup, tmp_path) -> None:
    values, vectors, run = setup
    rows = [*LIVE.values(), *GEN_SETTINGS]
    gen = run("render", *TINY, "--vectors", vectors, *cli_flags(values, rows), "--seconds", "0.2",
              "--out", str(tmp_path / "out.wav"))
    assert_reached(gen, values, rows)


def test_cli_flags_of_play_reach_the_generator_and_its_log_replays_them(setup, tmp_path) -> None:
    values, vectors, run = setup
    rows = [*LIVE.values(), *GEN_SETTINGS]
    take = tmp_path / "take.wav"
    gen = run("play", *TINY, "--vectors", vectors, *cli_flags(values, rows), "--seconds", "0.2", "--no-osc",
              "--no-status", "--output-device", "null", "--record", str(take))
    assert_reached(gen, values, rows)
    # The replayed log: its header is a start-up path of its own.
    replayed = run("render", "--replay", str(take.with_suffix(".jsonl")), *TINY, "--vectors", vectors,
                   "--out", str(tmp_path / "replayed.wav"))
    assert_reached(replayed, values, rows)


def test_config_defaults_reach_the_generator(setup, tmp_path) -> None:
    values, vectors, run = setup
    rows = [row for row in (*LIVE.values(), *GEN_SETTINGS) if row.keys]  # the rows a config may set
    assert set(LIVE) <= {row.name for row in rows}, "every live row has a YAML key"
    config = tmp_path / "session.yaml"
    config.write_text(yaml.safe_dump({"defaults": yaml_values(values, rows)}))
    gen = run("play", *TINY, "--vectors", vectors, "--config", str(config), "--seconds", "0.2", "--no-osc",
              "--no-status", "--output-device", "null")
    assert_reached(gen, values, rows)


def test_automation_at_zero_reaches_the_generator(setup, tmp_path) -> None:
    values, vectors, run = setup
    rows = list(LIVE.values())
    automation = tmp_path / "automation.yaml"
    automation.write_text(yaml.safe_dump([{"at": 0, **yaml_values(values, rows)}]))
    gen = run("render", *TINY, "--vectors", vectors, "--automation", str(automation), "--seconds", "0.2",
              "--out", str(tmp_path / "out.wav"))
    assert_reached(gen, values, rows)


def test_the_library_call_reaches_the_generator(setup, tiny) -> None:
    from musicsteer.engine.generator import render_codes
    from musicsteer.engine.vectors import SteeringVectors

    values, vectors, _ = setup
    rows = [*LIVE.values(), *GEN_SETTINGS]
    settings = {row.name: values[row.name] for row in GEN_SETTINGS}
    gen = Spy(tiny, controls_of(values), SteeringVectors.load(vectors), **settings)
    render_codes(gen, 10)
    assert_reached(gen, values, rows)


def test_eval_gives_every_clip_the_sampler_flags(setup, tmp_path) -> None:
    """eval's sampler flags are the table's sampler rows: each reaches the generator of every batch of clips
    (every stream of it) and every clip's identity (so a clip made with other settings is not reused)."""
    values, vectors, _ = setup
    rows = list(SAMPLER.values())
    want = Sampler(**{name: values[name] for name in SAMPLER})
    source, target = list(values["mix"])
    out = tmp_path / "eval"
    assert main(["eval", *TINY, "--clap", "tiny", "--vectors", vectors, "--n", "1", "--pairs", f"{source}:{target}",
                 "--seconds", "0.2", "--source-seconds", "0.2", *cli_flags(values, rows), "--out", str(out)]) == 0
    assert len(Spy.made) >= 4  # the sources, the prompted and unsteered arms, the steered ones
    for gen in Spy.made:
        assert_reached(gen, values, rows)
        assert [sampler_of(control.values) for control in gen.rows] == [want] * len(gen.rows)
    identities = [json.loads(path.read_text())["identity"] for path in (out / "clips").rglob("*.json")]
    assert len(identities) >= len(Spy.made)
    for identity in identities:
        assert {name: identity[name] for name in SAMPLER} == vars(want), identity


def test_every_path_is_given_every_row() -> None:
    """The values above come from the table alone: each live row has a flag, a YAML key and an effect."""
    for row in LIVE.values():
        assert row.cli and row.keys and row.effect, row.name
