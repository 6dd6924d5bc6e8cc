"""Tests for the YAML automation loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line_error

from musicsteer.controllers.automation import TimedChange, load_automation, parse_automation, step_for_time
from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.events import Change

EXAMPLE = """\
- {at: 16.0, prompt: "smooth jazz with brass"}
- {at: 4.0, alpha: 0.6}
- {at: 6.0, steer: jazz}
- {at: 8.0, alpha: 0.2, ramp: 2.0}
- {at: 10.0, mix: {jazz: 0.5, rock: 0.5}}
- {at: 12.0, morph: electronic, seconds: 4}
- {at: 14.0, layer: 18, site: residual, guidance: 4.0, temperature: 0.9, top_k: 200, top_p: 0.0, seed: 7}
"""


def _error(text: str) -> str:
    return one_line_error(parse_automation, text, source="automation.yaml")


def test_example_parses_in_time_order() -> None:
    got = parse_automation(EXAMPLE)
    assert [(tc.at, tc.change) for tc in got] == [
        (4.0, Change("alpha", 0.6)),
        (6.0, Change("mix", {"jazz": 1.0})),
        (8.0, Change("alpha", 0.2, 2.0)),
        (10.0, Change("mix", {"jazz": 0.5, "rock": 0.5})),
        (12.0, Change("mix", {"electronic": 1.0}, 4.0)),
        (14.0, Change("layer", (18,))),
        (14.0, Change("site", "residual")),
        (14.0, Change("guidance", 4.0)),
        (14.0, Change("temperature", 0.9)),
        (14.0, Change("top_k", 200)),
        (14.0, Change("top_p", 0.0)),
        (14.0, Change("seed", 7)),
        (16.0, Change("prompt", "smooth jazz with brass")),
    ]
    assert got[0].line == 2 and got[-1].line == 1
    assert all(isinstance(tc, TimedChange) for tc in got)


def test_equal_times_keep_file_order() -> None:
    got = parse_automation("- {at: 1, alpha: 1}\n- {at: 0, alpha: 0}\n- {at: 1, alpha: 2}\n")
    assert [tc.change.value for tc in got] == [0.0, 1.0, 2.0]


def test_events_mapping_and_block_style(tmp_path: Path) -> None:
    path = tmp_path / "auto.yaml"
    path.write_text("events:\n  - at: 2\n    steer: jazz=0.5,rock=0.5\n  - at: 1\n    alpha: -3\n")
    got = load_automation(path)
    assert [(tc.at, tc.change, tc.line) for tc in got] == [
        (1.0, Change("alpha", -3.0), 5),
        (2.0, Change("mix", {"jazz": 0.5, "rock": 0.5}), 3),
    ]


def test_empty_events_list() -> None:
    assert parse_automation("events: []\n") == []
    assert parse_automation("[]") == []


def test_unknown_key_names_key_and_line() -> None:
    message = _error("- {at: 1, alpha: 1}\n\n- at: 2\n  alpah: 0.5\n")
    assert message.startswith("automation.yaml line 4: unknown key 'alpah' (known: ")
    assert "alpha" in message


def test_yaml_syntax_error_has_line() -> None:
    message = _error("- {at: 1, alpha: 1}\n- {at: 2, alpha: [1, 2\n")
    assert message.startswith("automation.yaml line ") and "YAML syntax error" in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- {at: 1, alpha: 1}\n- {at: 2, alpha: .nan}\n", "line 2: alpha must be finite"),
        ("- {at: 1, top_k: 1.5}\n", "line 1: top_k needs a whole number"),
        ("- {at: 1, site: nowhere}\n", "line 1: site must be one of"),
        ("- {at: 1, mix: {jazz: 0}}\n", "line 1: a mix needs at least one non-zero weight"),
        ("- {at: 1, steer: ''}\n", "line 1: a mix needs"),
        ("- {alpha: 1}\n", "line 1: event has no 'at:'"),
        ("- {at: -1, alpha: 1}\n", "line 1: at must be at least 0 and at most 86400, got -1"),
        ("- {at: soon, alpha: 1}\n", "line 1: at needs a number, got 'soon'"),
        ("- {at: 1, ramp: 2}\n", "line 1: 'ramp' sets the glide time of alpha"),
        ("- {at: 1, steer: jazz, seconds: 2}\n", "line 1: 'seconds' sets the glide time of morph"),
        ("- {at: 1, alpha: 1, ramp: -2}\n", "line 1: ramp must be at least 0 and at most 3600, got -2"),
        ("- {at: 1, steer: a, mix: b}\n", "only one of mix, steer, morph"),
        ("- {at: 1}\n", "event changes nothing"),
        ("- {at: 1, alpha: 1, alpha: 2}\n", "given twice"),
        ("- 5\n", "line 1: each event must be a mapping"),
        ("alpha: 1\n", "unknown top-level key 'alpha'"),
        ("just text\n", "expected a list of events"),
        ("", "automation file is empty"),
    ],
)
def test_bad_input_is_one_line_error_with_line(text: str, needle: str) -> None:
    message = _error(text)
    assert message.startswith("automation.yaml")
    assert needle in message


def test_out_of_range_is_an_error_not_a_clamp() -> None:
    """A file is a start-up path: a value the table would clamp live is refused, naming its line."""
    assert _error("- {at: 0, alpha: 1}\n- {at: 1, alpha: 50}\n") == (
        "automation.yaml line 2: alpha must be at least -10 and at most 10, got 50")


def test_number_written_as_1e3_is_read_as_a_number() -> None:
    # YAML 1.1 reads `1e3` (no dot) as text; the loader still takes it as the number.
    (tc,) = parse_automation("- {at: 1e0, guidance: 1e1}\n")
    assert tc.at == 1.0 and tc.change == Change("guidance", 10.0)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MusicsteerError, match="automation file not found"):
        load_automation(tmp_path / "nope.yaml")


def test_load_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "automation.yaml"
    path.write_text("- {at: 1, alpah: 1}\n")
    with pytest.raises(MusicsteerError, match=r"automation\.yaml line 1: unknown key 'alpah'"):
        load_automation(path)


def test_step_for_time() -> None:
    assert step_for_time(0.0, 50.0) == 0
    assert step_for_time(4.0, 50.0) == 200
    assert step_for_time(0.33, 50.0) == 16  # 16.5 rounds to the nearest (even) step
    assert step_for_time(1.0, 12.5) == 12
    assert step_for_time(1.01, 50.0) == 50
    with pytest.raises(ValueError):
        step_for_time(-1.0, 50.0)
    with pytest.raises(ValueError):
        step_for_time(1.0, 0.0)
