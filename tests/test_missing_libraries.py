"""The real CLI, run where a system library is missing: PortAudio (sounddevice) or ALSA (python-rtmidi).

Both libraries are installed on the machines that run these tests and cannot be removed there, so each
test runs `musicsteer` in a subprocess whose import system refuses the one module that loads the system
library, with the very error the loader gives when the library is absent. That is the only thing
mocked: sounddevice's own import failing as it does without libportaudio.so.2, and python-rtmidi's
extension module failing as it does without libasound.so.2. Everything else (argument parsing, model
loading, the null device's clock, mido's backend loading, the CLI's error handling) is the real code.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs in the child before musicsteer is imported; argv[1] says which libraries are missing.
IMPORT_HOOK = """
import importlib.abc, sys

MISSING = set(sys.argv[1].split(","))


class MissingSystemLibrary(importlib.abc.MetaPathFinder):
    # Mocks only the missing system library (it cannot be removed here): the import that would load it fails.
    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice" and "portaudio" in MISSING:
            raise OSError("PortAudio library not found")  # sounddevice's message when libportaudio is absent
        if name == "rtmidi._rtmidi" and "alsa" in MISSING:  # the extension linked to libasound
            raise ImportError("libasound.so.2: cannot open shared object file: No such file or directory")
        return None


sys.meta_path.insert(0, MissingSystemLibrary())
from musicsteer.cli import main

sys.exit(main(sys.argv[2:]))
"""

PLAY_NULL = ["play", "--model", "tiny", "--device", "cpu", "--seconds", "0.5", "--no-osc", "--no-status",
             "--output-device", "null"]
PORTAUDIO_FIX = "install libportaudio2 (Debian/Ubuntu: apt-get install libportaudio2; macOS: brew install portaudio)"
MIDI_FIX = "install libasound2"


def musicsteer(missing: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`musicsteer ARGS` in a fresh interpreter where the libraries in `missing` (portaudio, alsa) are absent."""
    return subprocess.run([sys.executable, "-c", IMPORT_HOOK, missing, *args], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `musicsteer: error:` line of a run that failed as a user error (exit 2, no traceback).

    C libraries may print their own diagnostics to stderr (ALSA does when it has no sequencer), so
    the check is on what Python wrote: no traceback and exactly one line from musicsteer.
    """
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("musicsteer: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    return errors[0]


def test_hook_makes_the_imports_fail_as_the_missing_libraries_would() -> None:
    code = ("import importlib, sys\n"
            "for name in ('sounddevice', 'rtmidi'):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as exc:\n"
            "        print(name, type(exc).__name__, exc)\n")
    hook = IMPORT_HOOK.replace("from musicsteer.cli import main\n\nsys.exit(main(sys.argv[2:]))\n", code)
    result = subprocess.run([sys.executable, "-c", hook, "portaudio,alsa"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sounddevice OSError PortAudio library not found" in result.stdout
    assert "rtmidi ImportError libasound.so.2: cannot open shared object file" in result.stdout


# -- A: no PortAudio -------------------------------------------------------------------------------


def test_devices_without_portaudio_lists_null_and_midi_and_says_what_to_install() -> None:
    result = musicsteer("portaudio", "devices", "--midi-api", "jack")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout.splitlines()
    assert "  null  no sound card: consumed by a real-time clock" in out, result.stdout
    install = [line for line in out if "no PortAudio library" in line]
    assert len(install) == 1 and PORTAUDIO_FIX in install[0], result.stdout
    assert "MIDI inputs (play --midi NAME|INDEX):" in out  # MIDI is still asked (the jack API, no server: none)


def test_play_without_portaudio_still_plays_on_the_null_device() -> None:
    result = musicsteer("portaudio", *PLAY_NULL)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "musicsteer: error" not in result.stderr, result.stderr
    assert "played 0.5" in result.stderr, result.stderr


def test_play_on_a_real_device_without_portaudio_is_one_line_saying_what_to_install() -> None:
    args = [*PLAY_NULL[:-1], "0"]  # an index; a name takes the same path (the device list needs PortAudio)
    line = one_error_line(musicsteer("portaudio", *args))
    assert "no PortAudio library" in line and PORTAUDIO_FIX in line and "--output-device null" in line, line


def test_play_on_the_default_device_without_portaudio_is_one_line() -> None:
    args = [a for a in PLAY_NULL if a not in ("--output-device", "null")]
    assert PORTAUDIO_FIX in one_error_line(musicsteer("portaudio", *args))


# -- B: python-rtmidi cannot load libasound --------------------------------------------------------


def test_devices_without_the_midi_backend_lists_outputs_and_says_why_midi_is_unavailable() -> None:
    result = musicsteer("alsa", "devices")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout.splitlines()
    assert "audio outputs (play --output-device NAME|INDEX):" in out
    assert "  null  no sound card: consumed by a real-time clock" in out, result.stdout
    midi = [line for line in out if "MIDI unavailable" in line]
    assert len(midi) == 1, result.stdout
    assert "cannot load the MIDI backend (python-rtmidi): libasound.so.2: cannot open shared object file" in midi[0]
    assert MIDI_FIX in midi[0]


def test_devices_with_neither_library_still_lists_null_and_both_reasons() -> None:
    result = musicsteer("portaudio,alsa", "devices")
    assert result.returncode == 0, result.stderr
    assert "  null  no sound card: consumed by a real-time clock" in result.stdout
    assert PORTAUDIO_FIX in result.stdout and "cannot load the MIDI backend" in result.stdout, result.stdout


def test_play_with_midi_without_the_midi_backend_is_one_line() -> None:
    line = one_error_line(musicsteer("alsa", *PLAY_NULL, "--midi", "0"))
    assert "cannot load the MIDI backend (python-rtmidi): libasound.so.2" in line and MIDI_FIX in line, line


@pytest.mark.parametrize("extra", [["--port", "0", "--params", "alpha", "--out", "OUT"], ["--list"],
                                   ["--port", "0", "--notes", "rock", "--out", "OUT", "--api", "jack"]])
def test_midi_learn_without_the_midi_backend_is_one_line(extra: list[str], tmp_path) -> None:
    out = tmp_path / "learned.yaml"
    args = [str(out) if a == "OUT" else a for a in extra]
    line = one_error_line(musicsteer("alsa", "midi-learn", *args, timeout=60))
    assert "cannot load the MIDI backend (python-rtmidi): libasound.so.2" in line and MIDI_FIX in line, line
    assert not out.exists()
