"""What a corpus clip is made of: its spec (genre, lead, tempo, key, mood), notes and tracks, and the music theory.

A `Clip` is everything the caption says plus the seed its arrangement draws from; an arrangement turns it into
`Track`s of `Note`s (seconds, MIDI pitches, General MIDI programs) that render.py plays through FluidSynth.
Nothing here imports a renderer: planning a corpus and writing captions need only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 32000  # Hz, MusicGen's rate
CLIP_SECONDS = 10
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS

GENRES = ("classical", "electronic", "jazz", "rock")  # the paper's four
# The lead instrument families each genre plays, as far as musically plausible: piano in all four, so that
# timbre can be probed apart from genre; strings in two, guitar in two, organ in two.
LEADS: dict[str, tuple[str, ...]] = {
    "classical": ("piano", "strings", "organ", "flute"),
    "electronic": ("synth", "piano", "strings"),
    "jazz": ("piano", "sax", "trumpet", "guitar"),
    "rock": ("guitar", "piano", "organ"),
}
INSTRUMENTS = tuple(sorted({lead for leads in LEADS.values() for lead in leads}))
# Beats per minute (the quarter note) a musician would expect of each genre; the ranges barely overlap.
TEMPI: dict[str, tuple[int, int]] = {
    "classical": (56, 96), "electronic": (120, 134), "jazz": (120, 220), "rock": (96, 150)}
MOODS = ("energetic", "calm", "dark", "melancholic")  # major/minor x fast/slow half of the genre's range

KEY_NAMES = ("C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}

DRUM_KITS = {"standard": 0, "power": 16, "electronic": 24, "tr808": 25, "jazz": 32, "brush": 40}
KICK, SIDE_STICK, SNARE, CLAP, E_SNARE, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = (
    36, 37, 38, 39, 40, 42, 44, 46, 49, 51)


@dataclass(frozen=True)
class Clip:
    """One clip of the corpus: what its caption states, and where its notes come from."""

    index: int
    genre: str
    instrument: str  # the lead's family (a LEADS entry): the second label
    tempo: int  # BPM
    tonic: int  # pitch class 0..11 (C = 0)
    mode: str  # "major" or "minor"
    seed: int  # the arrangement's random stream (from the corpus seed and the index)
    source: str = ""  # classical: the music21 corpus score the excerpt is taken from

    @property
    def key(self) -> str:
        return f"{KEY_NAMES[self.tonic]} {self.mode}"

    @property
    def mood(self) -> str:
        low, high = TEMPI[self.genre]
        fast = self.tempo >= (low + high) / 2
        return MOODS[(self.mode == "minor") * 2 + (not fast)]

    @property
    def name(self) -> str:
        return f"{self.genre}-{self.index:05d}"


@dataclass
class Note:
    pitch: int
    start: float  # seconds
    end: float
    velocity: int


@dataclass
class Track:
    """One instrument's part. `role` picks its effects and level in the mix (render.py): lead, chords, bass,
    pad, drums, rhythm (distorted guitar)."""

    role: str
    program: int  # General MIDI program, 0-based; for drums the kit (bank 128)
    notes: list[Note] = field(default_factory=list)
    drums: bool = False
    label: str = ""  # what the caption calls it ("tenor saxophone")

    def add(self, pitch: int, start: float, end: float, velocity: float) -> None:
        """Add a note, clamped to the clip and to MIDI's ranges (a riff may run past the 10 s)."""
        if start < CLIP_SECONDS and end > start:
            self.notes.append(Note(int(np.clip(pitch, 0, 127)), float(start), float(min(end, CLIP_SECONDS + 0.5)),
                                   int(np.clip(round(velocity), 1, 127))))


@dataclass
class Arrangement:
    tracks: list[Track]
    texture: str  # what else is heard, for the caption ("walking double bass, ride cymbal and piano comping")
    lead_label: str  # the lead's own name ("alto saxophone")


def scale_pitch(tonic: int, mode: str, degree: int, octave: int) -> int:
    """MIDI pitch of a scale degree (0-based, may exceed 6 or be negative) in `octave` (C4 = 60 is octave 4)."""
    steps = SCALES[mode]
    return 12 * (octave + 1) + tonic + steps[degree % 7] + 12 * (degree // 7)


def chord(tonic: int, mode: str, degree: int, octave: int, size: int = 3) -> list[int]:
    """The diatonic chord on `degree` stacked in thirds: a triad (size 3) or a seventh chord (size 4)."""
    return [scale_pitch(tonic, mode, degree + 2 * i, octave) for i in range(size)]


def rng_for(clip: Clip, part: str) -> np.random.Generator:
    """An independent stream per clip and part, so adding a part never changes the others' notes."""
    return np.random.default_rng([clip.seed, sum(part.encode()) * 1000 + len(part)])


def velocity_scale(clip: Clip) -> float:
    """Calm and melancholic clips play softer, as their caption says."""
    return 1.0 if clip.mood in ("energetic", "dark") else 0.78
