"""Genres as style distributions, and the per-track plan drawn from them.

A genre is a set of distributions (tempo, mode, swing, groove and drum density, which
instruments play, chord rhythm, bass line, brightness, distortion, reverb); every track draws
its own values, and neighbouring genres share ranges and instruments, so genre is learnable
from the audio but never perfectly separable. Tags are the instruments that sound in a track
plus three attributes (fast, slow, distorted) that follow from its tempo and drive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENRES = ("rock", "electronic", "jazz", "classical", "hiphop", "ambient")
INSTRUMENTS = ("drums", "bass", "piano", "guitar", "synth", "strings", "bells", "vocal")
ATTRIBUTES = ("fast", "slow", "distorted")
TAGS = INSTRUMENTS + ATTRIBUTES
FAST_BPM, SLOW_BPM, DISTORTED_DRIVE = 128.0, 80.0, 1.5
MODES = {  # semitones above the key root
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
}
# Chord roots as scale degrees (0 = tonic): I-V-vi-IV, I-vi-IV-V, I-IV-V-I, ii-V-I, ...
PROGRESSIONS = (
    (0, 4, 5, 3),
    (0, 5, 3, 4),
    (0, 3, 4, 0),
    (1, 4, 0, 0),
    (5, 3, 0, 4),
    (0, 6, 5, 6),
    (0, 3),
)
REGISTERS = {"vocal": 60, "bells": 79, "piano": 67, "guitar": 62, "synth": 67, "strings": 67}
LEAD_ORDER = ("vocal", "synth", "guitar", "piano", "strings", "bells")  # who carries the melody


@dataclass(frozen=True)
class Style:
    """Distributions one genre draws a track's parameters from.

    Pairs are uniform ranges; dicts are relative weights of a choice, except ``instruments``,
    which gives each instrument's own probability of playing in a track.
    """

    tempo: tuple[float, float]  # beats per minute
    modes: dict[str, float]
    swing: tuple[float, float]  # 0 straight .. 0.33 triplet feel
    instruments: dict[str, float]
    chord_voices: tuple[str, ...]  # preference order for the chord part (added if none plays)
    chord_rhythms: dict[str, float]  # sustain | strum | stab | arpeggio | comp
    grooves: dict[str, float]  # backbeat | four_floor | breakbeat | ride | sparse
    drum_density: tuple[float, float]  # 0..1, extra hits on top of the groove
    bass_lines: dict[str, float]  # root | octave | walking | sparse | drone
    bass_voices: dict[str, float]  # bass | sub_bass | synth
    brightness: tuple[float, float]  # 0..1: partial roll-off and master tone filter
    drive: tuple[float, float]  # soft-clipping drive on the melodic parts (0 = clean)
    reverb: tuple[float, float]  # wet fraction of the smear
    note_density: tuple[float, float]  # melody onsets per beat, roughly
    sevenths: float = 0.1  # probability of seventh chords
    waltz: float = 0.0  # probability of 3/4


def _instruments(**probability: float) -> dict[str, float]:
    return probability


# Neighbours overlap on purpose: rock/electronic/hiphop share drums and tempi, jazz/classical
# share piano and strings, ambient/classical share slow tempi, drones and reverb.
STYLES = {
    "rock": Style(
        tempo=(95, 165),
        modes={"major": 40, "minor": 30, "mixolydian": 20, "dorian": 10},
        swing=(0, 0.08),
        instruments=_instruments(
            drums=0.95,
            bass=0.9,
            guitar=0.95,
            piano=0.25,
            synth=0.15,
            strings=0.1,
            vocal=0.6,
            bells=0.03,
        ),
        chord_voices=("guitar", "piano", "synth"),
        chord_rhythms={"strum": 60, "stab": 20, "sustain": 20},
        grooves={"backbeat": 80, "breakbeat": 20},
        drum_density=(0.4, 0.85),
        bass_lines={"root": 60, "octave": 30, "walking": 10},
        bass_voices={"bass": 90, "sub_bass": 10},
        brightness=(0.45, 0.9),
        drive=(0.3, 4.0),
        reverb=(0.05, 0.3),
        note_density=(0.8, 2.0),
    ),
    "electronic": Style(
        tempo=(110, 142),
        modes={"minor": 50, "dorian": 20, "phrygian": 10, "major": 20},
        swing=(0, 0.05),
        instruments=_instruments(
            drums=0.97,
            bass=0.95,
            synth=0.95,
            piano=0.2,
            strings=0.2,
            vocal=0.35,
            bells=0.25,
            guitar=0.05,
        ),
        chord_voices=("synth", "piano", "strings"),
        chord_rhythms={"stab": 30, "arpeggio": 40, "sustain": 30},
        grooves={"four_floor": 80, "breakbeat": 20},
        drum_density=(0.5, 1.0),
        bass_lines={"octave": 40, "root": 30, "sparse": 30},
        bass_voices={"sub_bass": 60, "synth": 30, "bass": 10},
        brightness=(0.5, 1.0),
        drive=(0.0, 1.8),
        reverb=(0.1, 0.45),
        note_density=(1.0, 3.0),
    ),
    "jazz": Style(
        tempo=(80, 200),
        modes={"dorian": 35, "major": 35, "mixolydian": 20, "minor": 10},
        swing=(0.12, 0.33),
        instruments=_instruments(
            drums=0.85,
            bass=0.95,
            piano=0.85,
            guitar=0.3,
            vocal=0.35,
            strings=0.1,
            synth=0.05,
            bells=0.05,
        ),
        chord_voices=("piano", "guitar"),
        chord_rhythms={"comp": 70, "sustain": 20, "arpeggio": 10},
        grooves={"ride": 85, "backbeat": 15},
        drum_density=(0.2, 0.6),
        bass_lines={"walking": 80, "root": 20},
        bass_voices={"bass": 100},
        brightness=(0.3, 0.7),
        drive=(0.0, 0.3),
        reverb=(0.1, 0.35),
        note_density=(1.0, 3.0),
        sevenths=0.9,
        waltz=0.15,
    ),
    "classical": Style(
        tempo=(60, 140),
        modes={"major": 45, "minor": 35, "harmonic_minor": 20},
        swing=(0, 0.03),
        instruments=_instruments(
            strings=0.9,
            piano=0.6,
            bells=0.08,
            vocal=0.2,
            guitar=0.05,
            bass=0.5,
            drums=0.08,
            synth=0.02,
        ),
        chord_voices=("strings", "piano"),
        chord_rhythms={"sustain": 40, "arpeggio": 50, "stab": 10},
        grooves={"sparse": 100},
        drum_density=(0.1, 0.3),
        bass_lines={"drone": 30, "root": 70},
        bass_voices={"bass": 100},
        brightness=(0.25, 0.65),
        drive=(0.0, 0.0),
        reverb=(0.25, 0.6),
        note_density=(0.7, 2.5),
        sevenths=0.15,
        waltz=0.25,
    ),
    "hiphop": Style(
        tempo=(76, 104),
        modes={"minor": 60, "dorian": 25, "phrygian": 15},
        swing=(0.05, 0.22),
        instruments=_instruments(
            drums=1.0,
            bass=0.95,
            piano=0.45,
            synth=0.45,
            vocal=0.55,
            strings=0.2,
            bells=0.2,
            guitar=0.1,
        ),
        chord_voices=("piano", "synth", "strings"),
        chord_rhythms={"sustain": 40, "stab": 40, "arpeggio": 20},
        grooves={"breakbeat": 70, "backbeat": 30},
        drum_density=(0.4, 0.8),
        bass_lines={"sparse": 70, "root": 30},
        bass_voices={"sub_bass": 75, "bass": 25},
        brightness=(0.3, 0.7),
        drive=(0.0, 1.0),
        reverb=(0.05, 0.3),
        note_density=(0.8, 2.5),
        sevenths=0.4,
    ),
    "ambient": Style(
        tempo=(55, 98),
        modes={"major": 30, "lydian": 25, "dorian": 25, "minor": 20},
        swing=(0, 0.05),
        instruments=_instruments(
            synth=0.8,
            strings=0.55,
            bells=0.5,
            piano=0.4,
            vocal=0.25,
            drums=0.25,
            bass=0.5,
            guitar=0.1,
        ),
        chord_voices=("synth", "strings", "piano"),
        chord_rhythms={"sustain": 75, "arpeggio": 25},
        grooves={"sparse": 60, "four_floor": 20, "breakbeat": 20},
        drum_density=(0.1, 0.4),
        bass_lines={"drone": 80, "root": 20},
        bass_voices={"sub_bass": 40, "synth": 30, "bass": 30},
        brightness=(0.15, 0.6),
        drive=(0.0, 0.2),
        reverb=(0.4, 0.8),
        note_density=(0.3, 1.2),
        sevenths=0.3,
        waltz=0.1,
    ),
}


@dataclass(frozen=True)
class TrackPlan:
    """Everything that decides how one track sounds, drawn from its genre's :class:`Style`."""

    genre: str
    seed: int
    tempo: float
    meter: int  # beats per bar
    root: int  # MIDI pitch class of the key, 0-11
    mode: str
    swing: float  # 0 = straight, 0.33 = triplet feel
    instruments: tuple[str, ...]
    chord_voice: str
    chord_rhythm: str
    leads: tuple[str, ...]  # first plays the melody, the rest a counter line
    bass_voice: str | None
    bass_line: str
    groove: str | None
    drum_density: float
    progression: tuple[int, ...]
    bars_per_chord: int
    sevenths: bool
    note_density: float
    brightness: float
    drive: float
    reverb: float

    @property
    def tags(self) -> list[str]:
        """Instrument tags that sound in the track, then attribute tags, in :data:`TAGS` order."""
        attrs = {
            "fast": self.tempo >= FAST_BPM,
            "slow": self.tempo < SLOW_BPM,
            "distorted": self.drive >= DISTORTED_DRIVE,
        }
        return [t for t in TAGS if t in self.instruments or attrs.get(t, False)]


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def plan_track(genre: str, seed: int) -> TrackPlan:
    """Draw one track's parameters for a genre, deterministically from a seed.

    Raises:
        ValueError: unknown genre.
    """
    if genre not in STYLES:
        raise ValueError(f"genre: unknown {genre!r}, expected one of {', '.join(GENRES)}")
    style = STYLES[genre]
    rng = np.random.default_rng([seed, GENRES.index(genre), 1])

    def uniform(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    present = [name for name in INSTRUMENTS if rng.random() < style.instruments.get(name, 0.0)]
    chord_voice = next((v for v in style.chord_voices if v in present), style.chord_voices[0])
    present = sorted(set(present) | {chord_voice}, key=INSTRUMENTS.index)
    leads = [v for v in present if v in REGISTERS and v != chord_voice] or [chord_voice]
    leads.sort(key=LEAD_ORDER.index)
    return TrackPlan(
        genre=genre,
        seed=seed,
        tempo=uniform(style.tempo),
        meter=3 if rng.random() < style.waltz else 4,
        root=int(rng.integers(12)),
        mode=_pick(rng, style.modes),
        swing=uniform(style.swing),
        instruments=tuple(present),
        chord_voice=chord_voice,
        chord_rhythm=_pick(rng, style.chord_rhythms),
        leads=tuple(leads),
        bass_voice=_pick(rng, style.bass_voices) if "bass" in present else None,
        bass_line=_pick(rng, style.bass_lines),
        groove=_pick(rng, style.grooves) if "drums" in present else None,
        drum_density=uniform(style.drum_density),
        progression=PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
        bars_per_chord=int(rng.choice([1, 2, 4], p=[0.5, 0.4, 0.1])),
        sevenths=bool(rng.random() < style.sevenths),
        note_density=uniform(style.note_density),
        brightness=uniform(style.brightness),
        drive=uniform(style.drive),
        reverb=uniform(style.reverb),
    )
