"""The benchmark report on the tiny model: complete, finite, JSON-ready, and leaving the model as it was.

Timings on a shared 2-core machine are noise-bound: these tests check structure and counts (every
change applied, one graph build), never one timing against another (warm ttfa may exceed cold)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from musicsteer.bench.benchmark import run_benchmark
from musicsteer.cli import main
from musicsteer.engine.loading import load_model

STEPS, RECAPTURE_TOKENS, KNOB_CHANGES = 20, 60, 12
NAMES = ["engine", "engine+steer", "engine+graph", "engine+graph+steer", "hf_generate"]


def positive_finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report_and_model() -> tuple[dict, object, object]:
    lm = load_model("tiny", "cpu", "float32")
    encoder = lm.model.audio_encoder
    # Bound methods are made afresh on each access, so keep the function and its owner to compare.
    before = encoder.decode
    rng_state = torch.random.get_rng_state()
    report = run_benchmark(lm, steps=STEPS, repeats=1, recapture_tokens=RECAPTURE_TOKENS, knob_changes=KNOB_CHANGES)
    assert torch.equal(torch.random.get_rng_state(), rng_state), "the global RNG must not move"
    return report, lm, before


def test_report_has_every_result_with_finite_positive_numbers(report_and_model: tuple) -> None:
    report, lm, _ = report_and_model
    assert report["model"] == lm.name
    assert report["steps"] == STEPS
    assert report["dtype"] == "float32"
    assert report["device"].startswith("cpu")
    assert {"torch", "transformers"} <= report.keys()
    assert report["decode_steps"] == ["eager", "graph"]  # the default (--decode auto): both steps, side by side
    names = [r["name"] for r in report["results"]]
    assert names == NAMES
    for result in report["results"]:
        for key in ("steps_per_s", "rtf", "ttfa_s", "ms_per_step"):
            value = result[key]
            assert positive_finite(value), (result["name"], key, value)
        assert result["rtf"] == pytest.approx(result["steps_per_s"] / lm.frame_rate)
        assert len(result["extra"]["steps_per_s_runs"]) == 1


def test_ratios_present_and_json_serialisable(report_and_model: tuple) -> None:
    report, _, _ = report_and_model
    ratios = report["ratios"]
    assert {"engine_vs_hf_generate", "steer_overhead_pct"} <= set(ratios)
    assert all(math.isfinite(v) for v in ratios.values())
    engine, _, graph, graph_steer, hf = report["results"]
    assert ratios["engine_vs_hf_generate"] == pytest.approx(engine["steps_per_s"] / hf["steps_per_s"])
    assert ratios["graph_vs_hf_generate"] == pytest.approx(graph["steps_per_s"] / hf["steps_per_s"])
    assert ratios["graph_steer_overhead_pct"] == pytest.approx(
        (graph_steer["ms_per_step"] / graph["ms_per_step"] - 1) * 100)
    assert {"graph_vs_engine", "graph_steer_vs_hf_generate", "engine_vs_hf_generate_step_median"} <= set(ratios)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_audio_decode_restored(report_and_model: tuple) -> None:
    _, lm, before = report_and_model
    after = lm.model.audio_encoder.decode
    assert after == before
    assert getattr(after, "__func__", after) is getattr(before, "__func__", before)
    assert "decode" not in vars(lm.model.audio_encoder)


def test_cold_start_reported_for_engine_and_graph_only(report_and_model: tuple) -> None:
    report, _, _ = report_and_model
    cold = {r["name"]: r["ttfa_cold_s"] for r in report["results"]}
    assert positive_finite(cold.pop("engine")) and positive_finite(cold.pop("engine+graph"))
    assert set(cold.values()) == {None}
    start = report["cold_start"]
    assert start["order"] == ["engine+graph", "engine"]
    # The fixture's model is freshly loaded, so the first cold session really built the FastDecoder.
    assert positive_finite(start["fast_decoder_build_s"])


def test_graph_contenders_capture_once_while_steering_moves(report_and_model: tuple) -> None:
    report, _, _ = report_and_model
    by_name = {r["name"]: r for r in report["results"]}
    for name in ("engine+graph", "engine+graph+steer"):
        assert by_name[name]["extra"]["graph_builds"] == 1
        assert by_name[name]["extra"]["graph_builds_runs"] == [1]
    assert "graph_builds" not in by_name["engine"]["extra"]
    # The capturing step plus STEPS timed steps each applied at least their alpha change.
    assert by_name["engine+graph+steer"]["extra"]["changes_applied_runs"][0] > STEPS
    check = report["recapture_check"]
    assert check["tokens"] == RECAPTURE_TOKENS and check["graph_builds"] == 1
    # alpha, mix, layer and site on every token, all applied
    assert check["changes_applied"] == check["changes_submitted"] == 4 * RECAPTURE_TOKENS


def test_knob_latency_every_change_applied(report_and_model: tuple) -> None:
    report, _, _ = report_and_model
    latency = report["knob_latency"]
    assert set(latency) == {"engine", "engine+graph"}
    for name, knob in latency.items():
        assert knob["changes_submitted"] == knob["changes_applied"] == KNOB_CHANGES, name
        for key in ("median_ms", "p95_ms", "max_ms", "ms_per_step"):
            assert positive_finite(knob[key]), (name, key, knob[key])
        assert knob["median_ms"] <= knob["p95_ms"] <= knob["max_ms"]
        assert knob["max_tokens"] >= 0  # no upper bound: the submitting thread may wait on the GIL


def test_skipping_the_extras(tiny) -> None:
    report = run_benchmark(tiny, steps=2, repeats=1, warmup=0, recapture_tokens=0, knob_changes=0)
    assert report["recapture_check"] is None and report["knob_latency"] is None
    with pytest.raises(ValueError):
        run_benchmark(tiny, steps=2, knob_changes=-1)


# --decode eager|graph: only that step's engine contenders, cold start, knob latency and ratios.
ONE_STEP = {
    "eager": (["engine", "engine+steer", "hf_generate"],
              {"engine_vs_hf_generate", "steer_overhead_pct", "engine_vs_hf_generate_step_median"}),
    "graph": (["engine+graph", "engine+graph+steer", "hf_generate"],
              {"graph_vs_hf_generate", "graph_steer_vs_hf_generate", "graph_steer_overhead_pct"}),
}


@pytest.mark.parametrize("step", ["eager", "graph"])
def test_one_decode_step_runs_only_its_contenders(tiny, step: str) -> None:
    report = run_benchmark(tiny, steps=2, repeats=1, warmup=0, recapture_tokens=10, knob_changes=2,
                           decode_steps=(step,))
    names, ratios = ONE_STEP[step]
    plain = names[0]
    assert report["decode_steps"] == [step]
    assert [r["name"] for r in report["results"]] == names
    assert set(report["ratios"]) == ratios and all(math.isfinite(v) for v in report["ratios"].values())
    assert report["cold_start"]["order"] == [plain]
    assert set(report["knob_latency"]) == {plain}
    # The recapture check counts the graph's captures: it runs with the graph step only.
    assert (report["recapture_check"] is None) == (step == "eager")
    graph_builds = [r["extra"].get("graph_builds") for r in report["results"][:2]]
    assert graph_builds == ([None, None] if step == "eager" else [1, 1])
    for bad in ((), ("fast",)):
        with pytest.raises(ValueError, match="decode_steps"):
            run_benchmark(tiny, steps=1, decode_steps=bad)


TINY = ["--model", "tiny", "--device", "cpu"]


def test_bench_command_honours_decode(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--decode", "eager", "--steps", "2", "--repeats", "1", "--knob-changes", "0",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["decode_steps"] == ["eager"] and report["recapture_check"] is None
    assert [r["name"] for r in report["results"]] == ONE_STEP["eager"][0]
    assert "engine+graph" not in capsys.readouterr().out
    # --soak runs one session through the step --decode names (graph on the CPU: the static step).
    assert main(["bench", *TINY, "--decode", "graph", "--soak", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["decode"] == "graph"


@pytest.mark.parametrize(("argv", "message"), [
    (["--decode", "eager", "--recapture-tokens", "5"], "--recapture-tokens counts the graph step's captures"),
    (["--decode", "fast"], "argument --decode"),
    # an option of another mode is refused, not ignored; two modes at once are argparse's refusal
    (["--heard", "4", "--workers", "2"], "--workers applies to --extract, not to --heard"),
    (["--heard", "4", "--steps", "5"], "--steps applies to the default run, not to --heard"),
    (["--extract", "6", "--decode", "eager"], "--decode applies to the default run or --soak or --heard"),
    (["--extract", "6", "--batch", "2"], "--batch applies to the default run, not to --extract"),
    (["--soak", "2", "--repeats", "2"], "--repeats applies to the default run or --extract, not to --soak"),
    (["--blocksize", "512"], "--blocksize applies to --heard, not to the default run"),
    (["--ray"], "--ray applies to --extract"),
    (["--heard", "4", "--extract", "6"], "not allowed with argument --heard"),
    # no abbreviated flags: this was taken as --output-device and the report went nowhere
    (["--output", "report.json"], "unrecognized arguments: --output"),
])
def test_bench_refuses_what_its_mode_would_ignore(tmp_path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "never.json"
    try:
        code = main(["bench", *TINY, *argv, "--json", str(out)])
    except SystemExit as exit:  # argparse's refusals exit from inside parse_args
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("musicsteer: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_bench_heard_runs_a_live_contender_per_buffer_against_the_baseline(tmp_path, capsys) -> None:
    """`bench --heard`: each buffer setting a whole live session through the null device's clock, α every
    0.5 s; the one-second baseline and auto in the same run, each with its own knob → heard figures."""
    out = tmp_path / "heard.json"
    assert main(["bench", *TINY, "--heard", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    baseline, auto = report["contenders"]
    assert (baseline["buffer"], auto["buffer"]) == (1.0, "auto") and baseline["chunk_frames"] == 5
    for contender in (baseline, auto):
        assert contender["changes"] >= 4 and contender["played_s"] == pytest.approx(4.0, abs=0.05)
        assert 0 < contender["heard_median_ms"] <= contender["heard_p95_ms"]
    assert baseline["heard_median_ms"] > 1000  # the buffer, and the decoder's lookahead and chunk
    assert auto["heard_median_ms"] < baseline["heard_median_ms"] - 500  # auto's lead starts at 0.1 s


def test_batched_contenders_report_frames_per_second_against_one_stream(tiny, tmp_path) -> None:
    """--batch N adds engine@BN and engine+graph@BN beside their B = 1 contenders, with frames/s
    (steps/s x N) and its ratio to B = 1; timings are not compared (a shared machine's noise)."""
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--batch", "3", "--steps", "4", "--repeats", "1", "--knob-changes", "0",
                 "--recapture-tokens", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    by_name = {r["name"]: r for r in report["results"]}
    assert list(by_name) == [*NAMES[:4], "engine@B3", "engine+graph@B3", "hf_generate"]
    assert report["batch"] == 3
    for name in ("engine", "engine+graph"):
        extra = by_name[f"{name}@B3"]["extra"]
        assert extra["batch"] == 3 and extra["frames_per_s"] == pytest.approx(3 * by_name[f"{name}@B3"]["steps_per_s"])
        assert positive_finite(report["ratios"][f"{name}@B3_vs_{name}_frames_per_s"])
        assert "frames_per_s" not in by_name[name]["extra"]
    with pytest.raises(ValueError, match="batch"):
        run_benchmark(tiny, steps=1, batch=0)


def test_extract_bench_reports_every_contender_and_equal_caches(tiny, ray_address) -> None:
    from musicsteer.bench.extract import run_extract_bench

    report = run_extract_bench(tiny, files=6, workers=2, ray=ray_address)
    assert [c["name"] for c in report["contenders"]] == ["serial", "workers=2", "ray"]
    assert report["caches_equal"] and report["segments"] == 12
    assert all(positive_finite(c["seconds"]) for c in report["contenders"])
    assert {"workers2_vs_serial", "ray_vs_serial", "bound_on_2_cores"} == set(report["ratios"])
    json.dumps(report)
