"""Procedural arrangements of electronic, jazz and rock clips, as a musician would recognise them.

electronic  120-134 BPM, four-on-the-floor kick on a TR-808/electronic kit, clap on 2 and 4, off-beat open
            hi-hats, 16th closed hats; off-beat synth bass; a warm pad swept open (render.py) and ducked under
            the kick; the lead (saw/square synth arpeggio, house-piano stabs or synth strings) with a delay.
jazz        120-220 BPM swung 8ths (ratio 0.6-0.7); ride cymbal "ding ding-a", hi-hat on 2 and 4, soft feathered
            kick and snare comping on a jazz or brush kit; walking acoustic bass with chromatic approaches;
            seventh-chord comping (ii-V-I, I-vi-ii-V, minor ii-V) in a Charleston rhythm; a bebop-ish lead line.
rock        96-150 BPM straight 8ths; kick on 1 and 3, snare on 2 and 4, 8th hi-hats, crash on the downbeat on a
            power kit; picked bass on the root; distorted power chords (I-bVII-IV, I-V-vi-IV, i-bVI-bVII);
            the lead: a distorted guitar riff on the pentatonic scale, pounding piano chords or a rock organ.
Each part draws from its own random stream (music.rng_for), so a clip's parts are independent of each other.
"""

from __future__ import annotations

import math

import numpy as np

from .music import (
    CLAP,
    CLIP_SECONDS,
    CLOSED_HAT,
    CRASH,
    DRUM_KITS,
    KICK,
    OPEN_HAT,
    PEDAL_HAT,
    RIDE,
    SCALES,
    SIDE_STICK,
    SNARE,
    Arrangement,
    Clip,
    Track,
    rng_for,
    velocity_scale,
)

QUALITIES = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10),
             "m7b5": (0, 3, 6, 10), "m6": (0, 3, 7, 9), "6": (0, 4, 7, 9)}
Chord = tuple[int, str]  # (root in semitones above the tonic, quality)
# Chords per bar (or per half bar in slower jazz) as ROOT:QUALITY, the root in semitones above the key's tonic.
_PROGRESSIONS = {
    ("electronic", "major"): ("0:maj 7:maj 9:min 5:maj", "9:min 5:maj 0:maj 7:maj", "0:maj 5:maj 9:min 7:maj"),
    ("electronic", "minor"): ("0:min 8:maj 3:maj 10:maj", "0:min 5:min 8:maj 7:min", "0:min 8:maj 10:maj 0:min"),
    ("rock", "major"): ("0:maj 10:maj 5:maj 0:maj", "0:maj 7:maj 9:min 5:maj", "0:maj 5:maj 7:maj 5:maj"),
    ("rock", "minor"): ("0:min 8:maj 10:maj 0:min", "0:min 10:maj 8:maj 10:maj", "0:min 5:min 10:maj 0:min"),
    ("jazz", "major"): ("2:m7 7:7 0:maj7 9:7", "0:maj7 9:m7 2:m7 7:7", "4:m7 9:7 2:m7 7:7"),
    ("jazz", "minor"): ("2:m7b5 7:7 0:m6 0:m6", "0:m7 5:m7 10:7 3:maj7", "0:m6 8:7 2:m7b5 7:7"),
}
PROGRESSIONS: dict[tuple[str, str], list[list[Chord]]] = {
    where: [[(int(c.split(":")[0]), c.split(":")[1]) for c in text.split()] for text in options]
    for where, options in _PROGRESSIONS.items()}
# Lead family -> (GM program, caption name) choices per genre.
VOICES = {
    ("electronic", "synth"): [(81, "saw synth lead"), (80, "square synth lead")],
    ("electronic", "piano"): [(0, "house piano"), (4, "electric piano")],
    ("electronic", "strings"): [(50, "synth strings"), (48, "string ensemble")],
    ("jazz", "piano"): [(0, "acoustic piano"), (4, "Rhodes electric piano")],
    ("jazz", "sax"): [(66, "tenor saxophone"), (65, "alto saxophone")],
    ("jazz", "trumpet"): [(56, "trumpet"), (59, "muted trumpet")],
    ("jazz", "guitar"): [(26, "jazz guitar")],
    ("rock", "guitar"): [(30, "distorted lead guitar"), (29, "overdriven lead guitar")],
    ("rock", "piano"): [(0, "rock piano")],
    ("rock", "organ"): [(18, "rock organ"), (16, "drawbar organ")],
}


class Grid:
    """Beats -> seconds at the clip's tempo; swung 8ths when `swing` > 0.5 (the long 8th's share of a beat)."""

    def __init__(self, tempo: int, swing: float = 0.5) -> None:
        self.beat, self.swing = 60.0 / tempo, swing
        self.bars = math.ceil(CLIP_SECONDS / (4 * self.beat)) + 1

    def t(self, beats: float) -> float:
        whole, frac = divmod(beats, 1.0)
        if abs(frac - 0.5) < 1e-6:
            frac = self.swing
        return (whole + frac) * self.beat


def pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def chord_pitches(clip: Clip, chord: Chord, low: int) -> list[int]:
    """The chord's notes in close position from the first root at or above MIDI pitch `low`."""
    root = low + (clip.tonic + chord[0] - low) % 12
    return [root + i for i in QUALITIES[chord[1]]]


def lead_line(track: Track, clip: Clip, grid: Grid, chords: list[Chord], per_bar: int, rng: np.random.Generator,
              low: int, rhythms: list[list[tuple[float, float]]], scale: tuple[int, ...], velocity: float,
              rest: float = 0.15) -> None:
    """A melody: a one-bar rhythm motif repeated (varied every other bar), chord tones on the beat, scale steps
    between, within an octave and a half above `low`."""
    pool = [p for p in range(low, low + 19) if (p - clip.tonic) % 12 in scale]
    idx = len(pool) // 2
    motif = pick(rng, rhythms)
    for bar in range(grid.bars):
        if bar % 2 == 1 and rng.random() < 0.5:
            motif = pick(rng, rhythms)
        for onset, length in motif:
            beats = 4 * bar + onset
            if rng.random() < rest:
                continue
            chord = chords[int(beats // (4 / per_bar)) % len(chords)]
            tones = {(clip.tonic + chord[0] + i) % 12 for i in QUALITIES[chord[1]]}
            idx = int(np.clip(idx + pick(rng, [-2, -1, -1, 1, 1, 2, 0]), 0, len(pool) - 1))
            if onset == int(onset):  # on the beat: the nearest chord tone
                near = sorted(range(len(pool)), key=lambda j: (abs(j - idx), j))
                idx = next((j for j in near if pool[j] % 12 in tones), idx)
            accent = 1.0 if onset == int(onset) else 0.85
            track.add(pool[idx], grid.t(beats), grid.t(beats + length) - 0.01, velocity * accent * rng.uniform(0.9, 1))


def _voice(clip: Clip, rng: np.random.Generator) -> tuple[int, str]:
    return pick(rng, VOICES[clip.genre, clip.instrument])


def electronic(clip: Clip) -> Arrangement:
    rng, vel = rng_for(clip, "form"), velocity_scale(clip)
    grid = Grid(clip.tempo)
    chords = pick(rng, PROGRESSIONS["electronic", clip.mode])
    kit = Track("drums", DRUM_KITS[pick(rng, ["tr808", "electronic"])], drums=True)
    sixteenth_hats = rng.random() < 0.6
    for bar in range(grid.bars):
        for beat in range(4):
            b = 4 * bar + beat
            kit.add(KICK, grid.t(b), grid.t(b + 0.5), 115 * vel)
            kit.add(OPEN_HAT, grid.t(b + 0.5), grid.t(b + 0.75), 80 * vel)
            if beat in (1, 3):
                kit.add(CLAP, grid.t(b), grid.t(b + 0.5), 100 * vel)
            if sixteenth_hats:
                for s in (0, 0.25, 0.75):
                    kit.add(CLOSED_HAT, grid.t(b + s), grid.t(b + s + 0.2), (70 if s else 85) * vel)
    bass = Track("bass", pick(rng, [38, 39]), label="synth bass")
    pad = Track("pad", pick(rng, [89, 90]), label="warm pad")
    lead_program, lead_label = _voice(clip, rng_for(clip, "voice"))
    lead = Track("lead", lead_program, label=lead_label)
    lrng = rng_for(clip, "lead")
    for bar in range(grid.bars):
        chord = chords[bar % len(chords)]
        notes = chord_pitches(clip, chord, 36)
        for beat in range(4):
            b = 4 * bar + beat
            bass.add(notes[0], grid.t(b + 0.5), grid.t(b + 0.9), 105 * vel)  # off-beat bass
        for p in chord_pitches(clip, chord, 55):
            pad.add(p, grid.t(4 * bar), grid.t(4 * bar + 4), 70 * vel)
        if clip.instrument == "synth":  # 16th arpeggio over the chord
            up = chord_pitches(clip, chord, 67)
            shape = [*up, up[0] + 12, *reversed(up)]
            for s in range(16):
                lead.add(shape[s % len(shape)], grid.t(4 * bar + s / 4), grid.t(4 * bar + s / 4 + 0.22),
                         (100 if s % 4 == 0 else 80) * vel * lrng.uniform(0.9, 1))
        elif clip.instrument == "piano":  # house-piano stabs on the off-beats
            for onset in pick(lrng, [[0.5, 1.5, 2.5, 3.5], [0, 0.75, 1.5, 2.5, 3.25], [0.5, 1.0, 2.5, 3.0]]):
                for p in chord_pitches(clip, chord, 60):
                    lead.add(p, grid.t(4 * bar + onset), grid.t(4 * bar + onset + 0.3), 100 * vel)
    if clip.instrument == "strings":  # a slow melody above the pad
        lead_line(lead, clip, grid, chords, 1, lrng, 67, [[(0, 2), (2, 2)], [(0, 3), (3, 1)], [(0, 4)]],
                  SCALES[clip.mode], 100 * vel, rest=0.0)
    texture = ("four-on-the-floor kick, claps and off-beat hi-hats, off-beat synth bass, "
               "a filtered pad ducked by the kick")
    return Arrangement([kit, bass, pad, lead], texture, lead_label)


def jazz(clip: Clip) -> Arrangement:
    rng, vel = rng_for(clip, "form"), velocity_scale(clip)
    grid = Grid(clip.tempo, swing=float(rng.uniform(0.6, 0.68)))
    chords = pick(rng, PROGRESSIONS["jazz", clip.mode])
    per_bar = 1 if clip.tempo >= 170 else 2  # harmonic rhythm: two chords a bar unless it is fast
    kit = Track("drums", DRUM_KITS[pick(rng, ["jazz", "brush"])], drums=True)
    drng = rng_for(clip, "drums")
    for bar in range(grid.bars):
        for beat in range(4):
            b = 4 * bar + beat
            kit.add(RIDE, grid.t(b), grid.t(b + 0.5), (95 if beat % 2 else 80) * vel)
            if beat in (1, 3):
                kit.add(RIDE, grid.t(b + 0.5), grid.t(b + 1), 70 * vel)  # the skip note: "ding ding-a"
                kit.add(PEDAL_HAT, grid.t(b), grid.t(b + 0.5), 75 * vel)
            kit.add(KICK, grid.t(b), grid.t(b + 0.5), 30 * vel)  # feathered
            if drng.random() < 0.18:
                kit.add(SNARE, grid.t(b + 0.5), grid.t(b + 1), 50 * vel)
    bass = Track("bass", 32, label="walking double bass")
    brng = rng_for(clip, "bass")
    steps = [chords[(4 * bar + beat) * per_bar // 4 % len(chords)] for bar in range(grid.bars) for beat in range(4)]
    for i, chord in enumerate(steps):
        tones = chord_pitches(clip, chord, 36)
        if i % (4 // per_bar) == 0:
            pitch = tones[0]
        elif (i + 1) % (4 // per_bar) == 0 and i + 1 < len(steps):  # chromatic approach to the next root
            pitch = chord_pitches(clip, steps[i + 1], 36)[0] + pick(brng, [-1, 1])
        else:
            pitch = pick(brng, tones[1:] + [tones[0] + 12, tones[0] + 2])
        bass.add(pitch, grid.t(i), grid.t(i + 0.95), 100 * vel)
    lead_program, lead_label = _voice(clip, rng_for(clip, "voice"))
    comp_program = 0 if clip.instrument in ("guitar", "sax", "trumpet") and rng.random() < 0.7 else 26
    if clip.instrument == "piano":
        comp_program = lead_program
    comp = Track("chords", comp_program, label="piano comping" if comp_program in (0, 4) else "guitar comping")
    crng = rng_for(clip, "comp")
    for bar in range(grid.bars):
        for half in range(per_bar):
            chord = chords[(bar * per_bar + half) % len(chords)]
            voicing = chord_pitches(clip, chord, 50)[1:] + [chord_pitches(clip, chord, 50)[0] + 14]  # rootless + 9th
            start = 4 * bar + half * (4 // per_bar)
            onset = start + pick(crng, [0, 1.5, -0.5, 0.5]) if per_bar == 1 else start + pick(crng, [0, -0.5, 0.5])
            for p in voicing:
                comp.add(p, grid.t(max(onset, 0)), grid.t(max(onset, 0) + 0.8), 70 * vel)
    lead = Track("lead", lead_program, label=lead_label)
    low = {"sax": 55, "trumpet": 60, "guitar": 55, "piano": 65}[clip.instrument]
    bebop = sorted({*SCALES["major" if clip.mode == "major" else "minor"], 10 if clip.mode == "major" else 11})
    rhythms = [[(0, 0.5), (0.5, 0.5), (1, 0.5), (1.5, 0.5), (2, 0.5), (2.5, 0.5), (3, 1)],
               [(0.5, 0.5), (1, 0.5), (1.5, 1), (2.5, 0.5), (3, 0.5), (3.5, 0.5)],
               [(0, 1.5), (1.5, 0.5), (2, 0.5), (2.5, 0.5), (3, 0.5), (3.5, 0.5)]]
    lead_line(lead, clip, grid, chords, per_bar, rng_for(clip, "lead"), low, rhythms, tuple(bebop), 100 * vel)
    comp_name = "piano" if comp_program in (0, 4) else "guitar"
    texture = f"swing ride cymbal and hi-hat on 2 and 4, walking double bass, {comp_name} comping on seventh chords"
    return Arrangement([kit, bass, comp, lead], texture, lead_label)


def rock(clip: Clip) -> Arrangement:
    rng, vel = rng_for(clip, "form"), velocity_scale(clip)
    grid = Grid(clip.tempo)
    chords = pick(rng, PROGRESSIONS["rock", clip.mode])
    kit = Track("drums", DRUM_KITS[pick(rng, ["power", "standard"])], drums=True)
    kick_pattern = pick(rng, [[0, 2], [0, 2.5], [0, 1.5, 2]])
    for bar in range(grid.bars):
        for k in kick_pattern:
            kit.add(KICK, grid.t(4 * bar + k), grid.t(4 * bar + k + 0.5), 115 * vel)
        for s in (1, 3):
            kit.add(SNARE, grid.t(4 * bar + s), grid.t(4 * bar + s + 0.5), 120 * vel)
        for e in range(8):
            b = 4 * bar + e / 2
            kit.add(CLOSED_HAT, grid.t(b), grid.t(b + 0.4), (90 if e % 2 == 0 else 70) * vel)
        if bar % 2 == 0:
            kit.add(CRASH, grid.t(4 * bar), grid.t(4 * bar + 2), 100 * vel)
    if rng.random() < 0.3:  # a fill into the next bar
        kit.add(SIDE_STICK, grid.t(4 * 1 + 3.5), grid.t(4 * 1 + 4), 90 * vel)
    bass = Track("bass", pick(rng, [33, 34]), label="bass guitar")
    rhythm = Track("rhythm", pick(rng, [29, 30]), label="distorted rhythm guitar")
    for bar in range(grid.bars):
        chord = chords[bar % len(chords)]
        root = chord_pitches(clip, chord, 40)[0]
        for e in range(8):
            b = 4 * bar + e / 2
            bass.add(root - 12 if root >= 40 else root, grid.t(b), grid.t(b + 0.45), 105 * vel)
            for p in (root, root + 7, root + 12):  # the power chord
                rhythm.add(p, grid.t(b), grid.t(b + 0.45), (105 if e % 2 == 0 else 90) * vel)
    lead_program, lead_label = _voice(clip, rng_for(clip, "voice"))
    lead = Track("lead", lead_program, label=lead_label)
    lrng = rng_for(clip, "lead")
    if clip.instrument == "guitar":  # a pentatonic riff
        penta = (0, 3, 5, 7, 10) if clip.mode == "minor" or lrng.random() < 0.5 else (0, 2, 4, 7, 9)
        rhythms = [[(0, 0.5), (0.5, 0.5), (1, 1), (2, 0.5), (2.5, 0.5), (3, 1)], [(0, 1.5), (1.5, 0.5), (2, 2)],
                   [(0, 0.5), (0.5, 0.5), (1, 0.5), (1.5, 0.5), (2, 1), (3, 0.5), (3.5, 0.5)]]
        lead_line(lead, clip, grid, chords, 1, lrng, 59, rhythms, penta, 110 * vel, rest=0.1)
    else:  # piano pounding 8th chords / organ holding them, with a melody on top
        for bar in range(grid.bars):
            chord = chords[bar % len(chords)]
            if clip.instrument == "piano":
                for e in range(8):
                    b = 4 * bar + e / 2
                    for p in chord_pitches(clip, chord, 57):
                        lead.add(p, grid.t(b), grid.t(b + 0.4), (105 if e % 2 == 0 else 85) * vel)
            else:
                for p in chord_pitches(clip, chord, 55) + [chord_pitches(clip, chord, 67)[0]]:
                    lead.add(p, grid.t(4 * bar), grid.t(4 * bar + 3.9), 100 * vel)
        lead_line(lead, clip, grid, chords, 1, lrng, 67, [[(0, 1), (1, 1), (2, 1.5), (3.5, 0.5)], [(0, 2), (2, 2)]],
                  SCALES[clip.mode], 105 * vel, rest=0.1)
    texture = "a rock drum kit with crash cymbals, distorted power chords, a picked bass on the root"
    return Arrangement([kit, bass, rhythm, lead], texture, lead_label)
