"""`musicsteer render` end to end: real processes, real WAV files, the cached tiny model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli_error, random_vectors

from musicsteer.cli import main
from musicsteer.controllers.automation import load_automation, step_for_time
from musicsteer.engine.audio_io import write_wav
from musicsteer.engine.codec import encode_audio
from musicsteer.engine.control import Controls
from musicsteer.engine.generator import Generator, render_codes
from musicsteer.engine.params import PARAMS, glide_steps
from musicsteer.engine.synthetic import synthetic_clip

TINY = ["--model", "tiny", "--device", "cpu"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicsteer", *args], capture_output=True, text=True, timeout=300)


def test_render_writes_the_requested_seconds_and_is_deterministic(tmp_path) -> None:
    for name in ("a", "b"):
        assert main(["render", *TINY, "--prompt", "rock", "--seconds", "2", "--seed", "3",
                     "--out", str(tmp_path / f"{name}.wav"), "--codes-out", str(tmp_path / f"{name}.npy")]) == 0
    audio, rate = sf.read(tmp_path / "a.wav")
    assert rate == 32000 and len(audio) == 2 * 32000
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (4, 100) and np.array_equal(a, b)
    assert main(["render", *TINY, "--prompt", "rock", "--seconds", "2", "--seed", "4",
                 "--out", str(tmp_path / "c.wav"), "--codes-out", str(tmp_path / "c.npy")]) == 0
    assert not np.array_equal(a, np.load(tmp_path / "c.npy"))


def test_decode_graph_renders_what_eager_renders(tmp_path, vectors_file) -> None:
    """--decode graph (on the CPU: the captured step's function, run eagerly) gives the eager codes,
    steering on; --decode auto on the CPU is eager."""
    codes = {}
    for mode in ("eager", "graph", "auto"):
        out = tmp_path / f"{mode}.npy"
        assert main(["render", *TINY, "--decode", mode, "--prompt", "rock", "--seconds", "2", "--top-k", "1",
                     "--vectors", vectors_file, "--steer", "jazz", "--alpha", "0.6",
                     "--out", str(tmp_path / f"{mode}.wav"), "--codes-out", str(out)]) == 0
        codes[mode] = np.load(out)
    assert np.array_equal(codes["graph"], codes["eager"]) and np.array_equal(codes["auto"], codes["eager"])
    assert len(np.unique(codes["eager"])) > 5  # not one repeated code


AUTOMATION = """\
- {at: 0.4, alpha: 0.8}
- {at: 0.2, steer: jazz}
- {at: 0.6, alpha: 0.1, ramp: 0.1}
- {at: 0.8, layer: 0}
"""


def test_automation_changes_land_on_their_tokens(tiny, tmp_path, vectors_file) -> None:
    path = tmp_path / "auto.yaml"
    path.write_text(AUTOMATION)
    from musicsteer.engine.vectors import SteeringVectors

    vectors = SteeringVectors.load(vectors_file)
    gen = Generator(tiny, Controls(prompt="rock", top_k=1, mix={"rock": 1.0}, alpha=0.3), vectors)
    for timed in load_automation(path):
        gen.control.submit(timed.change, at_step=step_for_time(timed.at, tiny.frame_rate))
    applied: dict[int, list[str]] = {}
    gen.listeners.add(lambda event: applied.setdefault(event.step, []).extend(c.param for c in event.changes))
    alpha_at: dict[int, float] = {}
    step = gen.step

    def step_and_record():
        frame = step()
        alpha_at[gen.step_index - 1] = gen.steering.alpha["residual"].max().item()
        return frame

    gen.step = step_and_record
    via_api = render_codes(gen, 60)
    assert applied == {10: ["mix"], 20: ["alpha"], 30: ["alpha"], 40: ["layer"]}
    # The jump at step 20 glides over the default slew (as a user's render does): it lands whole on its last token.
    glide = glide_steps(PARAMS["slew"].default, tiny.frame_rate)
    assert glide > 1
    assert alpha_at[19] == pytest.approx(0.3) and alpha_at[20] == pytest.approx(0.3 + 0.5 / glide)
    assert alpha_at[20 + glide - 2] < 0.8 and alpha_at[20 + glide - 1] == pytest.approx(0.8)
    assert alpha_at[30] == pytest.approx(0.8 - 0.7 * 0.2) and alpha_at[34] == pytest.approx(0.1)
    assert gen.steering.active["residual"] == frozenset({0})

    # The CLI applies the same file the same way: identical codes.
    out = tmp_path / "auto.npy"
    assert main(["render", *TINY, "--prompt", "rock", "--top-k", "1", "--seconds", str(60 / 50),
                 "--vectors", vectors_file, "--steer", "rock", "--alpha", "0.3", "--automation", str(path),
                 "--out", str(tmp_path / "auto.wav"), "--codes-out", str(out)]) == 0
    assert np.array_equal(np.load(out), via_api.numpy())
    # ...and steps before the first change match a render without automation.
    plain = render_codes(Generator(tiny, Controls(prompt="rock", top_k=1, mix={"rock": 1.0}, alpha=0.3), vectors), 60)
    assert torch.equal(plain[:, :10 - 3], via_api[:, :10 - 3])
    assert not torch.equal(plain, via_api)


def test_init_audio_is_continued(tiny, tmp_path) -> None:
    clip = synthetic_clip("chord", 1.0, 32000, seed=5)
    wav = write_wav(tmp_path / "init.wav", clip, 32000)
    codes_path = tmp_path / "cont.npy"
    assert main(["render", *TINY, "--seconds", "1", "--init-audio", str(wav), "--out", str(tmp_path / "cont.wav"),
                 "--codes-out", str(codes_path)]) == 0
    codes = np.load(codes_path)
    prompt = encode_audio(tiny, clip[None]).numpy()[0]
    assert codes.shape == (4, prompt.shape[-1] + 50)
    assert np.array_equal(codes[:, : prompt.shape[-1]], prompt)
    audio, _ = sf.read(tmp_path / "cont.wav")
    assert len(audio) == codes.shape[-1] * 640


def test_stereo_render(tmp_path) -> None:
    assert main(["render", "--model", "tiny-stereo", "--device", "cpu", "--seconds", "1",
                 "--out", str(tmp_path / "s.wav"), "--codes-out", str(tmp_path / "s.npy")]) == 0
    audio, _ = sf.read(tmp_path / "s.wav")
    assert audio.shape == (32000, 2)
    assert np.load(tmp_path / "s.npy").shape == (8, 50)


@pytest.fixture
def other_model_vectors(tmp_path) -> str:
    from conftest import in_memory

    lm = in_memory(hidden_size=96, num_layers=3, num_heads=6, ffn_dim=160)
    return str(random_vectors(lm).save(tmp_path / "other.safetensors"))


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, vectors_file, other_model_vectors, capsys) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- {at: 1.0, alpah: 0.5}\n")
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("- {at: 1.0, alpha: [\n")
    out = str(tmp_path / "x.wav")
    cases = {
        "unknown vector": ["--vectors", vectors_file, "--steer", "polka"],
        "another model's vectors": ["--vectors", other_model_vectors, "--steer", "rock"],
        "missing init audio": ["--init-audio", str(tmp_path / "nope.wav")],
        "unknown automation key": ["--automation", str(bad_yaml)],
        "broken automation yaml": ["--automation", str(broken_yaml)],
        "missing vectors file": ["--vectors", str(tmp_path / "nope.safetensors"), "--steer", "rock"],
    }
    for extra in cases.values():
        cli_error(["render", *TINY, "--seconds", "1", "--out", out, *extra], capsys)
    for seconds in ("0", "-1"):
        assert "seconds must be above 0" in cli_error(["render", *TINY, "--seconds", seconds, "--out", out], capsys)
    # and once through the console script, where any library's stray warning would be a second line
    result = cli("render", *TINY, "--seconds", "1", "--out", out, "--vectors", vectors_file, "--steer", "polka")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "polka" in lines[0], result.stderr


def test_variations_render_each_seed_in_one_pass(tmp_path, capsys) -> None:
    """--variations 3: out-1.wav .. out-3.wav (and codes), take i what --seed 5+i-1 renders alone (top-k off:
    tests/test_batch.py says why a top-k cut could differ)."""
    flags = [*TINY, "--prompt", "rock", "--seconds", "1", "--top-k", "0"]
    assert main(["render", *flags, "--seed", "5", "--variations", "3", "--out", str(tmp_path / "v.wav"),
                 "--codes-out", str(tmp_path / "v.npy")]) == 0
    said = capsys.readouterr().out
    takes = [np.load(tmp_path / f"v-{i}.npy") for i in (1, 2, 3)]
    for i, take in enumerate(takes, 1):
        assert f"v-{i}.wav" in said and f"seed {4 + i}" in said
        assert len(sf.read(tmp_path / f"v-{i}.wav")[0]) == 32000
        assert main(["render", *flags, "--seed", str(4 + i), "--out", str(tmp_path / "one.wav"),
                     "--codes-out", str(tmp_path / "one.npy")]) == 0
        assert np.array_equal(take, np.load(tmp_path / "one.npy"))
    assert not (tmp_path / "v.wav").exists() and not np.array_equal(takes[0], takes[1])
    meter = cli("render", *TINY, "--seconds", "1", "--variations", "2", "--meter", "--out", str(tmp_path / "m.wav"))
    assert meter.returncode == 2 and "--variations" in meter.stderr
