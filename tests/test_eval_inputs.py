"""`musicsteer eval`'s inputs are bounded where they enter: every bad value is one line and exit 2
BEFORE any clip is generated (prompt and CLAP templates, the α sweep under the steering rule, the
seeds, the label and pair lists, paths), and the protocol's defaults are the parameter table's."""

from __future__ import annotations

import time

import pytest
from conftest import one_line_error, random_vectors
from test_eval_support import run_cli

from musicsteer.engine.params import PARAMS, SAMPLER
from musicsteer.engine.sampling import Sampler
from musicsteer.evaluation import protocol as protocol_module
from musicsteer.evaluation.protocol import (
    ALPHAS,
    Protocol,
    check_clap_template,
    check_protocol,
    parse_alphas,
    parse_labels,
    parse_pairs,
    template_fields,
)

GENRES = ("rock", "classical", "electronic", "jazz")


@pytest.fixture(scope="module")
def base(tiny, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("eval-inputs")
    vectors = str(random_vectors(tiny, labels=GENRES).save(root / "genres.safetensors"))
    return ["eval", "--model", "tiny", "--device", "cpu", "--clap", "tiny", "--vectors", vectors, "--n", "1",
            "--pairs", "rock:jazz", "--seconds", "1", "--source-seconds", "1"]


def refused(base: list[str], tmp_path, capsys, extra: list[str], message: str) -> None:
    """The run fails in one line, exit 2, naming `message`, quickly, and nothing was written."""
    out = tmp_path / "out"
    capsys.readouterr()
    start = time.monotonic()
    assert run_cli([*base, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("musicsteer: error: ") and err.count("\n") == 1 and message in err, err
    assert len(err) < 400, err  # values are quoted bounded, never whole
    assert time.monotonic() - start < 20  # refused at start, not after the clips
    assert not out.exists()  # not even the folder: nothing was done


@pytest.mark.parametrize(("extra", "message"), [
    (["--template", "{}{}"], "--template needs exactly one {}"),
    (["--template", "{0}"], "--template may only use {}"),
    (["--template", "{label}"], "--template may only use {}"),
    (["--template", "no field"], "--template needs exactly one {}"),
    (["--template", "{"], "is not a format template"),
    (["--template", "{:>400000000}"], "no format spec"),
    (["--source-prompt", "{target}"], "--source-prompt may only use {source}"),
    (["--source-prompt", "{source.upper}"], "--source-prompt may only use {source}"),
    (["--blend-prompt", "{source}{genre}"], "--blend-prompt may only use {source} and {target}"),
    (["--blend-prompt", "{target!r}"], "no format spec or conversion"),
    (["--blend-prompt", "}"], "is not a format template"),
])
def test_templates_are_parsed_at_start_allowing_only_the_fields_filled(base, tmp_path, capsys, extra,
                                                                        message) -> None:
    refused(base, tmp_path, capsys, extra, message)


def test_a_huge_format_width_is_refused_without_formatting_it(base, tmp_path, capsys) -> None:
    refused(base, tmp_path, capsys, ["--source-prompt", "{source:>400000000}"], "no format spec")
    refused(base, tmp_path, capsys, ["--blend-prompt", "{source:.{target}}"], "no format spec")


def test_a_formatted_prompt_past_the_prompt_row_is_refused_at_start(base, tmp_path, capsys) -> None:
    many = "{source}" * 62  # 496 characters of template, 62 × "electronic" once filled
    size = PARAMS["prompt"].size
    assert len(many) <= size
    refused([*base[:-6], "--pairs", "electronic:jazz", *base[-4:]], tmp_path, capsys, ["--source-prompt", many],
            f"the source prompt of electronic is 620 characters long; the most is {size}")


@pytest.mark.parametrize(("extra", "message"), [
    (["--alphas", "-5"], "--alphas: alpha -5.0 needs to be above -1 with the renorm rule"),
    (["--alphas", "0.2,-1"], "--alphas: alpha -1.0 needs to be above -1"),
    (["--alpha", "-1"], "alpha -1.0 needs to be above -1"),
    (["--alphas", "0.2,0.2"], "--alphas lists a value twice"),
    (["--alphas", "0.2,0.20"], "--alphas lists a value twice"),
    (["--alphas", "0.5000001"], "would share the clip name a0.5"),
    (["--alphas", ",".join(str(i / 100) for i in range(17))], "--alphas takes 1 to 16 values, got 17"),
    (["--alphas", "11"], "--alphas must be at least -10 and at most 10"),
    (["--alphas", "nan"], "--alphas must be finite"),
])
def test_every_alpha_is_checked_against_its_row_and_the_rule_at_start(base, tmp_path, capsys, extra,
                                                                     message) -> None:
    refused(base, tmp_path, capsys, extra, message)


def test_negative_alphas_below_minus_one_pass_under_the_add_rule() -> None:
    check_protocol(Protocol(steer_rule="add", alpha=-5.0, alphas=(-8.0, 2.0)))
    assert parse_alphas("0.2, 0.4,") == (0.2, 0.4) and parse_alphas(None) == () and parse_alphas(" ") == ()


@pytest.mark.parametrize(("extra", "message"), [
    (["--seed", str(2**63 - 1)], "leaves no room for 1 clips"),
    (["--labels", "rock,jazz,rock"], "--labels lists a label twice"),
    (["--labels", "rock," + "x" * 65], "is 65 characters long; the most is 64"),
    (["--pairs", "rock:Rock"], "would share the clip folder"),
    (["--pairs", "rock:jazz,rock:jazz"], "--pairs lists a transition twice"),
    (["--pairs", "rock:" + "j" * 65], "is 65 characters long"),
    (["--pairs", "rock:jazz:x"], "unknown genre"),
    (["--n", "100001"], "--n must be at least 1 and at most 100000"),
    (["--clap-batch", "0"], "--clap-batch must be at least 1"),
    (["--template", "x" * 501 + "{}"], "is 503 characters long; the most is 500"),
    (["--clap", "c" * 5000], "cannot use --clap"),
    (["--vectors", "v" * 5000], "File name too long"),
])
def test_other_values_and_paths_are_one_line_at_start(base, tmp_path, capsys, extra, message) -> None:
    refused(base, tmp_path, capsys, extra, message)


def test_an_out_name_too_long_is_one_line(base, capsys, tmp_path) -> None:
    capsys.readouterr()
    assert run_cli([*base, "--out", str(tmp_path / ("o" * 5000))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("musicsteer: error: cannot use") and err.count("\n") == 1 and len(err) < 400, err


def test_library_callers_get_the_same_checks() -> None:
    assert template_fields("--blend-prompt", "{target} after {source}{{x}}", ("source", "target")) == [
        "target", "source"]
    assert check_clap_template("This is a sound of {}.") == "This is a sound of {}."
    for template in ("{}{}", "{0}", "{} {{}} {x}", 7):
        one_line_error(check_clap_template, template)
    for bad in (Protocol(n=0), Protocol(seconds=0.0), Protocol(source_seconds=float("nan")),
                Protocol(alpha=-1.0), Protocol(alphas=(0.2, 0.2)), Protocol(layer=-1), Protocol(site="nowhere"),
                Protocol(steer_rule="mul"), Protocol(steer_text="all"), Protocol(pairs=()),
                Protocol(sampling=Sampler(top_k=5000)), Protocol(sampling=Sampler(guidance=float("inf"))),
                Protocol(source_prompt="{source:>9}"), Protocol(blend_prompt="x" * 501),
                Protocol(pairs=(("rock", "rock"),)), Protocol(seed=2**63 - 10_000)):
        one_line_error(check_protocol, bad)
    check_protocol(Protocol())
    assert parse_pairs("rock:jazz, jazz:rock") == (("rock", "jazz"), ("jazz", "rock"))
    assert parse_labels("rock, jazz,") == ["rock", "jazz"] and parse_labels(None) == []
    one_line_error(parse_labels, ",".join(f"l{i}" for i in range(protocol_module.LABELS_MAX + 1)))


def test_protocol_defaults_are_the_tables() -> None:
    protocol = Protocol()
    assert set(vars(protocol.sampling)) == set(SAMPLER)  # the sampler's rows, every one
    for name in SAMPLER:
        assert getattr(protocol.sampling, name) == PARAMS[name].default, name
    assert protocol.alpha == PARAMS["alpha"].default and protocol.seed == PARAMS["seed"].default
    assert protocol.steer_rule == PARAMS["steer_rule"].default and protocol.n == protocol_module.N.default
    assert ALPHAS.low == PARAMS["alpha"].low and ALPHAS.high == PARAMS["alpha"].high
