"""Classical clips: excerpts of real scores from music21's bundled corpus, transposed and orchestrated.

The scores are Bach's four-part chorales and the Haydn, Mozart and Beethoven string quartets that ship in
music21's wheel (no download). A clip takes 10 s from a random bar at its own tempo (56-96 BPM, a chorale's or an
andante's pace), transposed to the clip's key, its parts given to the lead's ensemble: solo piano, a string
quartet, a church organ, or a flute over strings. No drums; a concert hall's reverb (render.py).
Parsing a score takes 0.1-2 s: parsed scores are kept per process (an LRU of 32).
"""

from __future__ import annotations

import functools
import math

from .music import CLIP_SECONDS, KEY_NAMES, Arrangement, Clip, Track, rng_for, velocity_scale

COMPOSERS = ("bach", "haydn", "mozart", "beethoven")
# Parts high to low; each ensemble: (caption name of the lead, programs for the soprano, alto, tenor, bass parts).
ENSEMBLES = {
    "piano": ("solo piano", (0, 0, 0, 0)),
    "strings": ("string quartet", (40, 40, 41, 42)),
    "organ": ("church organ", (19, 19, 19, 19)),
    "flute": ("flute over strings", (73, 48, 48, 42)),
}


@functools.cache
def sources() -> tuple[str, ...]:
    """The usable scores, as music21 corpus paths relative to the corpus root, in a stable order: the chorales
    and the quartet movements in .mxl (Beethoven's Grosse Fuge, op. 133, is left out: one piece, 20 s to parse)."""
    from music21 import corpus

    found = []
    for composer in COMPOSERS:
        for path in corpus.getComposer(composer):
            rel = path.as_posix().split("/corpus/", 1)[-1]
            if rel.endswith(".mxl") and "opus133" not in rel:
                found.append(rel)
    return tuple(sorted(set(found)))


def pick_source(rng) -> str:  # noqa: ANN001 (a numpy Generator)
    """Three clips in four from the chorales, the rest from the quartets."""
    scores = sources()
    chorales = [s for s in scores if s.startswith("bach/")]
    quartets = [s for s in scores if not s.startswith("bach/")]
    pool = chorales if rng.random() < 0.75 or not quartets else quartets
    return pool[int(rng.integers(len(pool)))]


@functools.lru_cache(maxsize=32)
def _parsed(source: str) -> tuple[tuple[tuple[tuple[float, float, int], ...], ...], float, int, str]:
    """(parts: (offset, length in quarter notes, MIDI pitch) per note, high to low, the four with the most notes;
    length in quarters; tonic pitch class; mode) of a corpus score."""
    from music21 import corpus

    score = corpus.parse(source)
    parts = []
    for part in score.parts:  # (a chorale of a cantata may have trumpets and timpani above its four voices)
        notes = []
        for element in part.flatten().notes:
            for pitch in element.pitches:  # a chord in one part: each of its notes
                notes.append((float(element.offset), float(element.quarterLength), int(pitch.midi)))
        if notes:
            parts.append(tuple(notes))
    busiest = sorted(sorted(range(len(parts)), key=lambda i: -len(parts[i]))[:4])  # the four voices, high to low
    parts = [parts[i] for i in busiest]
    found = score.analyze("key")
    mode = found.mode if found.mode in ("major", "minor") else "major"
    return tuple(parts), float(score.highestTime), found.tonic.pitchClass, mode


def score_key(source: str) -> tuple[int, str]:
    """The score's own key: (tonic pitch class, mode), by music21's key analysis."""
    _, _, tonic, mode = _parsed(source)
    return tonic, mode


def arrange(clip: Clip) -> Arrangement:
    """`clip.source`'s excerpt, transposed from the score's key to `clip.tonic` (the nearest way: -5..+6)."""
    parts, length, tonic, _ = _parsed(clip.source)
    rng, vel = rng_for(clip, "excerpt"), velocity_scale(clip)
    beat = 60.0 / clip.tempo
    span = CLIP_SECONDS / beat + 1  # quarter notes the excerpt needs
    # Start on a beat where the top voice plays (a voice may rest for bars), early enough for 10 s of score.
    starts = sorted({math.floor(o) for o, _, _ in parts[0] if o <= length - span}) or [0]
    start = float(starts[int(rng.integers(len(starts)))])
    shift = (clip.tonic - tonic + 6) % 12 - 6
    lead_label, programs = ENSEMBLES[clip.instrument]
    tracks = []
    voices = [*parts, *[()] * (4 - len(parts))]
    for i, notes in enumerate(voices):
        track = Track("lead" if i == 0 else ("bass" if i == 3 else "chords"), programs[i], label=lead_label)
        loops = max(1, math.ceil((start + span) / max(length, 1e-3)))  # a score shorter than 10 s repeats
        for loop in range(loops):
            for offset, quarters, pitch in notes:
                at = offset + loop * length - start
                if at + quarters > 0 and at < span:
                    track.add(pitch + shift, max(at, 0) * beat, (at + quarters) * beat - 0.02,
                              (88 if i == 0 else 72) * vel * rng.uniform(0.92, 1.0))
        tracks.append(track)
    composer = clip.source.split("/", 1)[0].capitalize()
    kind = "chorale" if composer == "Bach" else "string quartet movement"
    texture = f"a {composer} {kind} transposed to {KEY_NAMES[clip.tonic]}, no drums, a concert hall's reverb"
    return Arrangement(tracks, texture, lead_label)
