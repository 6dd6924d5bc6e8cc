"""The parameter table: one definition per control, and everything derived from it agrees with it."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path

import pytest

from musicsteer.cli import build_parser
from musicsteer.controllers.automation import KNOWN_KEYS
from musicsteer.controllers.mappings import KNOB_PARAMS
from musicsteer.engine.control import Controls
from musicsteer.engine.errors import BadType, NonFinite, OutOfRange, TooLarge, shown
from musicsteer.engine.params import CONTROLS, GLIDE, LIVE, PARAMS, SETTINGS, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_holds_the_generated_table_of_knobs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- knobs: generated from engine/params.py -->", "<!-- /knobs -->"
    assert begin in readme and end in readme, "README lost the markers of its table of knobs"
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_table(), "README's table of knobs is stale: paste params.markdown_table()"


@pytest.mark.parametrize("command", ["render", "play"])
def test_help_lists_every_flag_with_its_range(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for row in CONTROLS:
        assert row.cli in text, row.name
        assert row.describe_range() in text, (row.name, row.describe_range())


def test_every_derived_surface_names_the_same_controls() -> None:
    assert [f.name for f in dataclasses.fields(Controls)] == [row.status for row in LIVE.values()]
    assert {f.name: f.default for f in dataclasses.fields(Controls) if f.default is not dataclasses.MISSING} == {
        row.status: row.default if row.default is not None else "" for row in LIVE.values()
        if row.name not in ("mix", "layer")}
    for row in LIVE.values():
        assert set(row.keys) <= set(KNOWN_KEYS)
        assert row.osc, f"{row.name} has no OSC address"
        assert (row.name in KNOB_PARAMS) == row.midi
    # every flag is spelled once: no two rows share a CLI flag, a YAML key or an OSC address
    for attribute in ("cli", "keys", "osc"):
        seen = [x for row in PARAMS.values() for x in ((getattr(row, attribute),) if attribute == "cli"
                                                       else getattr(row, attribute)) if x]
        assert len(seen) == len(set(seen)), attribute


HOSTILE = [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**400, -1, 0, "1", b"\x00", None, [1.0], {"a": 1}, True]


@pytest.mark.parametrize("row", [*PARAMS.values(), GLIDE], ids=lambda r: r.name)
def test_every_row_refuses_or_bounds_every_hostile_value(row) -> None:
    """Start-up: each hostile value is refused with a typed, one-line, bounded message. Live: a number out
    of range comes back clamped inside the range and marked; nothing else gets through."""
    for value in HOSTILE:
        for live in (False, True):
            try:
                checked, clamped = row.check(value, live)
            except (BadType, NonFinite, OutOfRange, TooLarge) as err:
                message = str(err)
                assert "\n" not in message and len(message) < 300, message
                continue
            if row.kind in ("number", "whole") and isinstance(checked, tuple):  # a list for a many row
                assert all(row.low <= v <= row.high for v in checked) and live or not clamped
            elif row.kind in ("number", "whole"):
                assert row.low <= checked <= row.high and isinstance(checked, int | float)
                assert clamped == (not row.low <= value <= row.high)
                assert live or not clamped
            elif row.kind == "mix":
                assert isinstance(checked, dict) and all(row.low <= w <= row.high for w in checked.values())
            else:
                assert isinstance(checked, str) and len(checked) <= max(row.size, 64)


def test_sizes_are_bounded_and_messages_never_render_a_value_in_full() -> None:
    with pytest.raises(TooLarge):
        LIVE["prompt"].check("x" * 100_000)
    with pytest.raises(TooLarge):
        LIVE["mix"].check({f"v{i}": 1.0 for i in range(1000)})
    with pytest.raises(TooLarge):
        LIVE["layer"].check(tuple(range(100)))
    nested = [[[[["x" * 10_000] * 1000] * 1000] * 1000]]
    assert len(shown(nested)) <= 60
    with pytest.raises(BadType) as info:
        LIVE["alpha"].check(nested)
    assert len(str(info.value)) < 120


def test_derived_quantities_cannot_overflow() -> None:
    """seconds -> steps is bounded by the inputs' ranges: the largest glide and the latest automation
    event are finite step counts, so `round(seconds * rate)` can never raise."""
    from musicsteer.engine.params import AT, glide_steps

    assert glide_steps(GLIDE.high, 50) == 180_000 and glide_steps(1e308, 50) == 180_000
    assert round(AT.high * 50) == 4_320_000
    assert round(PARAMS["seconds"].high * 50) == 4_320_000
    buffer, blocksize = PARAMS["buffer"], PARAMS["blocksize"]
    assert buffer.high * 48_000 * 2 * 4 < 64 << 20 and blocksize.high < 1 << 16  # ring memory stays small


def test_cli_text_is_parsed_by_the_row() -> None:
    assert PARAMS["top_k"].parse("250") == 250 and PARAMS["seed"].parse(str(2**63 - 1)) == 2**63 - 1
    assert PARAMS["layer"].parse("17,19") == (17, 19) and PARAMS["layer"].parse("18") == (18,)
    assert PARAMS["layer"].parse(18) == (18,) and PARAMS["layer"].parse([1, 2]) == (1, 2)
    assert PARAMS["mix"].parse({"rock": "1e-1"}) == {"rock": 0.1}  # YAML 1.1 reads 1e-1 as text
    with pytest.raises(BadType, match="lists a value twice"):
        PARAMS["layer"].parse("1,1")
    assert PARAMS["mix"].parse("jazz=0.5,rock=0.5") == {"jazz": 0.5, "rock": 0.5}
    assert PARAMS["mix"].parse("jazz") == {"jazz": 1.0}
    for name, text, kind in (("top_k", "abc", BadType), ("top_k", "2.5", BadType), ("seconds", "inf", NonFinite),
                             ("seconds", "0", OutOfRange), ("blocksize", "1000000000", OutOfRange),
                             ("slew", "nan", NonFinite), ("temperature", "-3", OutOfRange),
                             ("guidance", "99", OutOfRange), ("site", "mlp", BadType)):
        with pytest.raises(kind):
            PARAMS[name].parse(text)
    assert set(SETTINGS) <= set(PARAMS.values())


def test_the_engine_imports_nothing_from_controllers_probes_or_the_cli() -> None:
    """engine/ is model -> audio: it never imports musicsteer.controllers, .probes, .commands, .cli or .bench."""
    layers = ("controllers", "probes", "commands", "cli", "bench", "evaluation")
    # the installed names and the repo's folders (a bare `controllers` is importable from the repo's root)
    forbidden = (*(f"musicsteer.{name}" for name in layers), *(f"{name}." for name in layers), *layers)
    for path in sorted((ROOT / "engine").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                raise AssertionError(f"{path.name} reaches outside engine/ with a relative import")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):  # an import the names above would not see
                raise AssertionError(f"{path.name} imports by name at run time (line {node.lineno})")


def test_code_refers_to_the_design_document_in_the_repo() -> None:
    assert (ROOT / "docs" / "design.md").is_file()
    for path in [*ROOT.glob("engine/*.py"), *ROOT.glob("controllers/*.py"), *ROOT.glob("musicsteer/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"DESIGN\.md|shared/DESIGN|DESIGN §", text), f"{path} cites the outside design file"


def test_numbers_as_text_are_plain_ascii_decimals_and_glides_are_named_by_their_key() -> None:
    """From a hostile review: float() reads `1_0` as 10 and `٣` as 3; a typo must not become a number.
    A glide time is named as its row's key spells it (alpha's ramp, the mix's seconds)."""
    for text in ("1_0", "٣", "１"):
        with pytest.raises(BadType, match="needs a number"):
            PARAMS["seconds"].parse(text)
    assert PARAMS["seconds"].parse("1e1") == 10.0
    from musicsteer.engine.events import Change, validate_change

    with pytest.raises(NonFinite, match="^ramp must be finite"):
        validate_change(Change("alpha", 0.5, math.inf))
    with pytest.raises(BadType, match="^seconds needs a number"):
        validate_change(Change("mix", {"rock": 1.0}, "rock"))
