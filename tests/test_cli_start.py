"""The CLI at start: instant answers, one-line errors, and Ctrl-C at any moment without a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

# What --version and --help must not import: the model stack loads only in the commands that run it.
HEAVY = ("torch", "transformers", "sklearn", "matplotlib")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["play", "--help"], ["render", "--help"],
                                  ["bench", "--help"], ["probe", "train", "--help"], ["eval", "--help"]])
def test_version_and_help_import_no_model_stack(argv: list[str]) -> None:
    code = (f"import sys\nfrom musicsteer.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-300:]


@pytest.mark.parametrize(("argv", "words"), [
    (["render", "--top-k", "abc", "--out", "x.wav"], "argument --top-k: top_k needs a whole number, got 'abc'"),
    (["render", "--seconds"], "argument --seconds: expected one argument"),
    (["plya"], "invalid choice: 'plya'"),
    (["render"], "the following arguments are required: --out"),
    (["play", "--when-slow", "sometimes"], "when_slow must be one of rebuffer, play"),
])
def test_argument_errors_are_one_line(argv: list[str], words: str) -> None:
    result = subprocess.run([sys.executable, "-m", "musicsteer", *argv], capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("musicsteer: error: "), result.stderr
    assert words in lines[0] and "usage:" not in result.stderr


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_at_any_moment_of_start_up_is_one_line(tmp_path, delay: float) -> None:
    """SIGINT while the command imports torch or builds the model: one line, exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "musicsteer", "render", "--model", "tiny", "--device", "cpu",
                             "--seconds", "30", "--out", str(tmp_path / "x.wav")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a test run started in the background (`cmd &`) inherits
                            # SIGINT ignored, and Python then never raises KeyboardInterrupt at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "musicsteer: interrupted", err
