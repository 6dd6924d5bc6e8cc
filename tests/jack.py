"""A real, clocked audio device for tests on machines without a sound card: JACK's dummy backend.

`with jack_server(rate) as name:` starts `jackd -d dummy` under a server name unique to this test
process, re-initialises PortAudio until it sees the server's "system" device, and stops it again.
CI installs jackd (`apt-get install -y --no-install-recommends libportaudio2 jackd2`); when it is
missing the test fails with that instruction instead of skipping, so a green run always means the
audio path really ran.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

APT_LINE = "apt-get install -y --no-install-recommends libportaudio2 jackd2"
_names = itertools.count()


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:
        pytest.fail(f"PortAudio is missing ({exc}); install it: {APT_LINE}", pytrace=False)
    return sounddevice


def _reinitialise(sd) -> None:
    while sd._initialized:
        sd._terminate()
    sd._initialize()


@contextmanager
def jack_server(rate: int = 32000, period: int = 1024, timeout: float = 15.0) -> Iterator[str]:
    """Run a JACK dummy server at `rate`; yields its name once PortAudio lists its "system" device."""
    jackd = shutil.which("jackd")
    if jackd is None:
        pytest.fail(f"jackd is not installed; the audio-device tests need it: {APT_LINE}", pytrace=False)
    sd = _sounddevice()
    name = f"musicsteer-test-{os.getpid()}-{next(_names)}"
    saved = {key: os.environ.get(key) for key in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    # libjack inside this process (PortAudio's JACK host API) finds the server by this variable.
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_START_SERVER"] = "1"  # never let libjack spawn a default server behind our back
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    log_fd, log = tempfile.mkstemp(prefix="jackd-", suffix=".log")
    proc = subprocess.Popen(
        [jackd, "--no-realtime", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period)],
        stdout=log_fd, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    os.close(log_fd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jackd exited with {proc.returncode}: {_tail(log)}", pytrace=False)
            _reinitialise(sd)
            if any(d["name"] == "system" and d["max_output_channels"] > 0 for d in sd.query_devices()):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"PortAudio did not see JACK server {name} within {timeout} s: {_tail(log)}",
                            pytrace=False)
            time.sleep(0.1)
        yield name
    finally:
        # PortAudio's JACK host API aborts the whole process (an assert in Pa_Terminate) if it is
        # terminated after its server died, so let go of PortAudio before stopping jackd.
        while sd._initialized:
            sd._terminate()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sd._initialize()
        os.unlink(log)


def _tail(path: str) -> str:
    with open(path, errors="replace") as fh:
        return " | ".join(fh.read().strip().splitlines()[-5:])
