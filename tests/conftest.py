"""Shared fixtures: tiny random MusicGen models built offline, and a steering-vectors file for them.

Nothing here is mocked: every model is a real transformers MusicGen with random weights (the hub's
weights cannot be downloaded here), built by the project's own recipe.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from musicsteer.engine.errors import MusicsteerError
from musicsteer.engine.loading import LoadedModel, load_model
from musicsteer.engine.tiny import build_tiny_model
from musicsteer.engine.vectors import SteeringVectors

# Tiny models are all per-op overhead: on a 2-core machine a second torch thread only adds contention
# (measured here: up to 10x slower under load). The CLI does the same for tiny models (--threads).
torch.set_num_threads(1)


def cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """`musicsteer ARGV` in this process (musicsteer.cli.main, argparse's exit included): it must exit 2
    with one stderr line, `musicsteer: error: ...`, and no traceback. Returns that line. In process, since a
    subprocess pays ~5 s of imports per case; each such test still runs one case through the console script."""
    from musicsteer.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("musicsteer: error: "), (argv, code, err)
    return lines[0]


def one_line_error(call: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The message of the MusicsteerError `call(*args, **kwargs)` raises, checked to be one line."""
    with pytest.raises(MusicsteerError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def in_memory(stereo: bool = False, **shape: int) -> LoadedModel:
    """A tiny random MusicGen of the given shape, wrapped as the engine sees a loaded model."""
    model, processor = build_tiny_model(stereo=stereo, **shape)
    return LoadedModel(model.eval(), processor, "tiny-test", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    """The cached `--model tiny`, loaded through the same from_pretrained path a user's model takes."""
    return load_model("tiny", "cpu", "float32")


def random_vectors(lm: LoadedModel, labels: tuple[str, ...] = ("rock", "jazz", "classical"), seed: int = 0,
                   best_layer: int | None = None) -> SteeringVectors:
    gen = torch.Generator().manual_seed(seed)
    directions = {label: torch.randn(lm.num_layers, lm.d_model, generator=gen) for label in labels}
    layer = lm.num_layers - 1 if best_layer is None else best_layer
    return SteeringVectors.create(directions, model=lm.name, method="random", best_layer=layer)


@pytest.fixture
def vectors_file(tiny: LoadedModel, tmp_path) -> str:
    return str(random_vectors(tiny).save(tmp_path / "tiny-vectors.safetensors"))


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` (tmpfs; the tests run as root, as CI does), so a disk really fills:
    /dev/full cannot hold a WAV at all, and a patched write() would not show what libsndfile does."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs (the disk-full tests need root): {done.stderr.strip()}",
                    pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def jack_midi() -> Iterator[str]:
    """A dummy JACK server for MIDI over JACK virtual ports (tests/jack.py; a failure says how to install it)."""
    from jack import jack_server

    with jack_server() as name:
        yield name


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--autoplay-policy=no-user-gesture-required")


def chromium(profile: Path, width: int = 1200, height: int = 900, prefs: dict | None = None):  # -> WebDriver
    """Headless Chromium through Debian's chromedriver (explicit: selenium never downloads one). CI installs
    both (scripts/test); missing, the test fails and says what to install."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("needs Debian's chromium and chromium-driver (scripts/test installs them)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if prefs:
        options.add_experimental_option("prefs", prefs)
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A real local Ray cluster for the --ray tests: `ray start --head --block` with 2 CPUs and no GPU
    (what a researcher's head node runs), in its own process group and temp folder, so that it is
    neither what a user's `--ray` finds on this machine nor stopped with theirs: the end of the session
    stops exactly this cluster (SIGTERM to its group, then SIGKILL). Its address."""
    import os
    import secrets
    import shutil
    import signal
    import socket
    import sys
    import tempfile
    import time

    with socket.socket() as s:  # a free port for the head's GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Token authentication, as the README's recipe sets it up: the head and every driver of these tests (this
    # process, which imports ray after these lines, and the CLI's) use this session's own token.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    temp = tempfile.mkdtemp(prefix="msr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    log = Path(temp) / "head.log"
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}", "--block"], env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (Path(temp) / "ray_current_cluster").exists():  # written once the head is up
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):  # the group: `ray start` and its children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(wait)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_address(ray_head: str) -> Iterator[str]:
    """The head's address, for a test that drives it from this process: disconnected afterwards."""
    import ray

    yield ray_head
    if ray.is_initialized():
        ray.shutdown()
