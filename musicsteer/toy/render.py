"""Tracks of notes -> audio: FluidSynth with a General MIDI soundfont, then pedalboard effects, then a 10 s clip.

Each clip is rendered by a fresh FluidSynth, each track on its own MIDI channel and output (FluidSynth's own reverb
and chorus off: pedalboard adds the room), as float samples. So a clip never depends on what was rendered before
it: the same notes give the same bytes.
Per track: distortion for rock guitars, a sweeping low-pass on electronic pads, delay on electronic leads.
The mix: sidechain ducking under the electronic kick, a genre's room (hall for classical, club for electronic,
small room for jazz and rock), a gentle compressor, then loudness normalised to -20 dBFS RMS with peaks under
-1 dBFS. Output: (CLIP_SAMPLES,) float32, mono, 32 kHz.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from musicsteer.engine.errors import MusicsteerError

from .music import CLIP_SAMPLES, SAMPLE_RATE, Arrangement, Track

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2")
INSTALL = "pip install 'musicsteer[toy]' and apt-get install fluidsynth fluid-soundfont-gm"
TARGET_RMS = 0.1  # -20 dBFS
PEAK = 0.89  # -1 dBFS
# Level of each role in the mix (linear gain on FluidSynth's output), so the lead is heard above the rest.
ROLE_GAIN = {"lead": 1.0, "chords": 0.55, "rhythm": 0.5, "bass": 0.8, "pad": 0.4, "drums": 0.75}


def soundfont() -> Path:
    """The General MIDI soundfont: $MUSICSTEER_SOUNDFONT, else Debian's fluid-soundfont-gm."""
    named = os.environ.get("MUSICSTEER_SOUNDFONT")
    for path in ([named] if named else SOUNDFONTS):
        if Path(path).is_file():
            return Path(path)
    where = f"MUSICSTEER_SOUNDFONT={named} is not a file" if named else f"no soundfont at {SOUNDFONTS[0]}"
    raise MusicsteerError(f"{where}; install one: apt-get install fluid-soundfont-gm")


def check_renderers() -> None:
    """One line naming what to install when FluidSynth, pyfluidsynth, pedalboard or music21 is missing."""
    missing = []
    for module in ("fluidsynth", "pedalboard", "music21"):
        try:
            __import__(module)
        except ImportError:
            missing.append({"fluidsynth": "pyfluidsynth"}.get(module, module))
        except OSError:  # pyfluidsynth is there but libfluidsynth is not
            missing.append("libfluidsynth")
    if missing:
        raise MusicsteerError(f"building the toy corpus needs {', '.join(missing)}: {INSTALL}")
    soundfont()


def _new_synth(font: Path):  # -> fluidsynth.Synth with `sfid`
    import fluidsynth

    # One stereo output per MIDI channel (a channel goes to output channel % audio-channels), so that every track
    # comes out apart for its own effects; reverb and chorus off (their outputs stay silent).
    synth = fluidsynth.Synth(gain=0.5, samplerate=SAMPLE_RATE, **{
        "synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1,
        "synth.audio-channels": 16, "synth.audio-groups": 16})
    synth.sfid = synth.sfload(str(font))
    return synth


def render_tracks(tracks: list[Track], font: Path, samples: int = CLIP_SAMPLES) -> list[np.ndarray]:
    """The tracks through one fresh FluidSynth, each on its own MIDI channel (drums on 10) and output: one
    (samples,) float32 mono array (the stereo pair's mean) per track. Fresh for every clip, because a reused synth
    (even reset) starts a drum kit's first notes a little differently after other clips: a clip must not depend on
    what was rendered before it. Float output: no 16-bit dither, no quantisation before the effects."""
    import fluidsynth

    melodic = [c for c in range(16) if c != 9]
    if sum(not t.drums for t in tracks) > len(melodic) or sum(t.drums for t in tracks) > 1:
        raise ValueError("render_tracks plays at most 15 melodic tracks and one drum track")
    synth = _new_synth(font)
    channels = []
    for track in tracks:
        channel = 9 if track.drums else melodic.pop(0)
        synth.program_select(channel, synth.sfid, 128 if track.drums else 0, track.program)
        channels.append(channel)
    events = sorted([(round(n.start * SAMPLE_RATE), 1, c, n.pitch, n.velocity)
                     for c, t in zip(channels, tracks, strict=True) for n in t.notes]
                    + [(round(n.end * SAMPLE_RATE), 0, c, n.pitch, 0)
                       for c, t in zip(channels, tracks, strict=True) for n in t.notes])  # offs before ons
    pointer = ctypes.POINTER(ctypes.c_float)
    write = fluidsynth._fl.fluid_synth_nwrite_float
    write.argtypes = [ctypes.c_void_p, ctypes.c_int, *[ctypes.POINTER(pointer)] * 4]
    left, right = np.zeros((16, samples), np.float32), np.zeros((16, samples), np.float32)
    fx = np.zeros((4, samples), np.float32)  # the (inactive) reverb and chorus outputs

    def at(buffers: np.ndarray, frame: int):  # a C array of float pointers into buffers[:, frame:]
        return (pointer * len(buffers))(*[ctypes.cast(row.ctypes.data + 4 * frame, pointer) for row in buffers])

    done = 0
    try:
        for frame, on, channel, pitch, velocity in [*events, (samples, 0, 0, -1, 0)]:
            frame = min(frame, samples)
            while done < frame:  # in blocks: a call renders at most a few thousand frames in some builds
                n = min(frame - done, 4096)
                if write(synth.synth, n, at(left, done), at(right, done), at(fx[:2], done), at(fx[2:], done)):
                    raise RuntimeError("FluidSynth failed to render")
                done += n
            if pitch < 0 or frame >= samples:
                continue
            if on:
                synth.noteon(channel, pitch, velocity)
            else:
                synth.noteoff(channel, pitch)
    finally:
        synth.delete()
    return [(left[c] + right[c]) / 2 for c in channels]


class _board:  # noqa: N801 (used like a function)
    """A pedalboard chain that takes and gives (samples,) float32 mono."""

    def __init__(self, *plugins) -> None:
        import pedalboard

        self.board = pedalboard.Pedalboard(list(plugins))

    def __call__(self, audio: np.ndarray, rate: int, reset: bool = True) -> np.ndarray:
        return np.asarray(self.board.process(audio[None, :], rate, reset=reset), np.float32).reshape(-1)

    process = __call__


def track_effects(genre: str, track: Track, audio: np.ndarray, beat: float) -> np.ndarray:
    """The track's own effects: rock guitars distorted, electronic pads swept open, electronic leads delayed."""
    import pedalboard as pb

    if genre == "rock" and track.role in ("rhythm", "lead") and track.program in (29, 30):
        board = _board(pb.HighpassFilter(90), pb.Distortion(drive_db=24), pb.LowpassFilter(5500), pb.Gain(-14))
        return board(audio, SAMPLE_RATE)
    if genre == "electronic" and track.role == "pad":
        # A filter sweep: the ladder filter opens over the clip, block by block, keeping its state.
        blocks = np.array_split(audio, 40)
        ladder = pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF24, cutoff_hz=300, resonance=0.4)
        out = []
        for i, block in enumerate(blocks):
            ladder.cutoff_hz = 300 * (12 ** (i / (len(blocks) - 1)))
            out.append(_board(ladder).process(block, SAMPLE_RATE, reset=False))
        return np.concatenate(out)
    if genre == "electronic" and track.role == "lead":
        return _board(pb.Delay(delay_seconds=0.75 * beat, feedback=0.35, mix=0.3))(audio, SAMPLE_RATE)
    return audio


def sidechain(kicks: list[float], samples: int, beat: float) -> np.ndarray:
    """The gain curve of a bus ducked by the kick: down to 0.35 at each kick, back within half a beat."""
    gain = np.ones(samples, np.float32)
    release = max(1, int(0.5 * beat * SAMPLE_RATE))
    curve = 1 - 0.65 * (1 - np.linspace(0, 1, release, dtype=np.float32)) ** 2
    for t in kicks:
        at = int(t * SAMPLE_RATE)
        if at < samples:
            n = min(release, samples - at)
            gain[at:at + n] = np.minimum(gain[at:at + n], curve[:n])
    return gain


ROOMS = {"classical": (0.85, 0.3), "electronic": (0.6, 0.18), "jazz": (0.3, 0.12), "rock": (0.35, 0.1)}


def render(genre: str, arrangement: Arrangement, tempo: int, font: Path | None = None) -> np.ndarray:
    """The clip's audio: (CLIP_SAMPLES,) float32 in [-1, 1], -20 dBFS RMS (unless the peak limit lowers it)."""
    import pedalboard as pb

    font = font or soundfont()
    beat = 60.0 / tempo
    music = np.zeros(CLIP_SAMPLES, np.float32)
    drums = np.zeros(CLIP_SAMPLES, np.float32)
    tracks = [t for t in arrangement.tracks if t.notes]
    for track, dry in zip(tracks, render_tracks(tracks, font), strict=True):
        audio = track_effects(genre, track, dry, beat) * ROLE_GAIN[track.role]
        if track.drums:
            drums += audio
        else:
            music += audio
    if genre == "electronic":
        kicks = [n.start for t in arrangement.tracks if t.drums for n in t.notes if n.pitch == 36]
        music *= sidechain(kicks, CLIP_SAMPLES, beat)
    room, wet = ROOMS[genre]
    mix = music + drums
    mix = _board(pb.Reverb(room_size=room, wet_level=wet, dry_level=1 - wet, width=0.0),
                 pb.Compressor(threshold_db=-18, ratio=2.5, attack_ms=10, release_ms=150))(mix, SAMPLE_RATE)
    fade = int(0.02 * SAMPLE_RATE)  # the cut at 10 s, without a click
    mix[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return normalise(mix)


def normalise(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < 1e-6:
        raise MusicsteerError("a toy clip rendered silent (is the soundfont a General MIDI one?)")
    audio = audio * (TARGET_RMS / rms)
    peak = float(np.max(np.abs(audio)))
    if peak > PEAK:
        audio = audio * (PEAK / peak)
    return audio.astype(np.float32)
