"""From a track plan to audio: compose a score (chords, melody, bass, drums), render, mix.

The score is a list of note events per part on a 1/16-note grid; rendering places cached voice
notes (one synthesis per voice, pitch and length) at swung onset times, levels each part, and
the master bus adds distortion, a tone filter and a reverb-like smear. All randomness comes from
generators seeded by (seed, genre), so a track is the same on every run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from musicoder.demo_corpus import synth
from musicoder.demo_corpus.styles import GENRES, MODES, REGISTERS, TrackPlan, plan_track

STEPS_PER_BEAT = 4
# Level (RMS) of each part before the master bus; counter lines are "counter1", "counter2", ...
STEM_RMS = {
    "kick": 0.2,
    "snare": 0.12,
    "hihat": 0.05,
    "bass": 0.18,
    "chords": 0.11,
    "lead": 0.15,
    "counter": 0.08,
}
RING_SECONDS = {"bells": 0.25, "piano": 0.25}  # let these ring past the written length
DRUM_HITS = tuple(synth.DRUMS.items())


@dataclass
class _Score:
    """Note events per part, in steps (1/16 notes): (step, midi, length_steps, velocity)."""

    parts: dict[str, list[tuple[int, int, int, float]]] = dataclasses.field(default_factory=dict)

    def add(self, part: str, step: int, midi: int, length: int, velocity: float = 1.0) -> None:
        self.parts.setdefault(part, []).append((step, midi, max(1, length), velocity))


@dataclass(frozen=True)
class _Harmony:
    """Key, mode and progression of a plan: scale degrees -> MIDI pitches, bar -> chord."""

    plan: TrackPlan

    @property
    def bar_steps(self) -> int:
        return self.plan.meter * STEPS_PER_BEAT

    def pitch(self, degree: int, base: int) -> int:
        scale = MODES[self.plan.mode]
        return base + self.plan.root + 12 * (degree // 7) + scale[degree % 7]

    def chord(self, bar: int) -> list[int]:
        """Scale degrees of the chord at `bar`: triad or seventh chord on the progression root."""
        plan = self.plan
        root = plan.progression[(bar // plan.bars_per_chord) % len(plan.progression)]
        return [root + 2 * i for i in range(4 if plan.sevenths else 3)]


def _compose(plan: TrackPlan, bars: int, rng: np.random.Generator) -> _Score:
    """Chords, melody and counter lines, bass and drum hits for `bars` bars."""
    score, harmony = _Score(), _Harmony(plan)
    _compose_chords(harmony, score, bars, rng)
    _compose_melody(harmony, score, bars, rng)
    _compose_bass(harmony, score, bars, rng)
    _compose_drums(plan, score, bars, rng)
    return score


def _compose_chords(harmony: _Harmony, score: _Score, bars: int, rng: np.random.Generator) -> None:
    """One rhythm figure per track, repeated on every chord."""
    plan, bar_steps = harmony.plan, harmony.bar_steps
    figure = _chord_figure(plan.chord_rhythm, bar_steps, plan.bars_per_chord, rng)
    velocity = 0.5 if plan.chord_rhythm == "sustain" else 0.7
    for bar in range(0, bars, plan.bars_per_chord):
        tones = [harmony.pitch(d, 48) for d in harmony.chord(bar)]
        tones = [t - 12 if t > 74 else t for t in tones]
        for i, (offset, length) in enumerate(figure):
            step = bar * bar_steps + offset
            if plan.chord_rhythm == "arpeggio":  # up the chord; every other pass an octave up
                tone = tones[i % len(tones)] + 12 * ((i // len(tones)) % 2)
                score.add("chords", step, tone, length, 0.8)
            else:
                for tone in tones:
                    score.add("chords", step, tone, length, velocity)


def _chord_figure(
    rhythm: str, bar_steps: int, span_bars: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(offset_steps, length_steps) hits covering one chord span."""
    span = bar_steps * span_bars
    if rhythm == "sustain":
        return [(0, span)]
    if rhythm == "strum":
        return [(s, 2) for s in range(0, span, 2) if s % 4 == 0 or rng.random() < 0.7]
    if rhythm == "arpeggio":
        every = int(rng.choice([1, 2]))
        return [(s, 2 * every) for s in range(0, span, every)]
    if rhythm == "stab":
        offsets = range(2, bar_steps, 4) if rng.random() < 0.5 else range(4, bar_steps, 8)
        return [(b * bar_steps + o, 2) for b in range(span_bars) for o in offsets]
    comp = [(s, int(rng.integers(2, 5))) for s in range(0, span, 2) if rng.random() < 0.3]
    return comp or [(0, 4)]


def _compose_melody(harmony: _Harmony, score: _Score, bars: int, rng: np.random.Generator) -> None:
    """Two-bar phrases A and B laid out A A B A; strong beats snap to chord tones.

    The first lead voice plays the melody; each further lead plays a sparser line of chord
    tones under it (counter1 on every beat, counter2 every other beat, ...).
    """
    plan, bar_steps = harmony.plan, harmony.bar_steps
    steps = np.arange(2 * bar_steps)
    probs = np.where(steps % 4 == 0, 0.6, np.where(steps % 2 == 0, 0.35, 0.12)) * plan.note_density
    phrases = []
    for _ in range(2):
        onsets = np.flatnonzero((rng.random(len(steps)) < probs) | (steps == 0))
        moves = rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3], size=len(onsets))
        phrases.append((onsets, np.clip(np.cumsum(moves) + int(rng.integers(0, 5)), -2, 9)))
    for index in range((bars + 1) // 2):
        onsets, degrees = phrases[(0, 0, 1, 0)[index % 4]]
        ends = np.r_[onsets[1:], 2 * bar_steps]
        for onset, end, degree in zip(onsets, ends, degrees, strict=True):
            step = index * 2 * bar_steps + int(onset)
            chord = harmony.chord(step // bar_steps)
            if onset % 4 == 0:
                candidates = [c + 7 * k for c in chord for k in (-1, 0, 1)]
                degree = min(candidates, key=lambda c: abs(c - degree))
            if onset > 0 and rng.random() < 0.1:
                continue  # a rest
            length = max(1, round((end - onset) * rng.uniform(0.6, 1.0)))
            lead = harmony.pitch(int(degree), REGISTERS[plan.leads[0]] - 7)
            score.add("lead", step, lead, length, rng.uniform(0.75, 1.0))
            for j, voice in enumerate(plan.leads[1:], start=1):
                if onset % (4 * j) == 0:
                    tone = harmony.pitch(chord[j % len(chord)], REGISTERS[voice] - 7)
                    score.add(f"counter{j}", step, tone, 4 * j, 0.7)


def _compose_bass(harmony: _Harmony, score: _Score, bars: int, rng: np.random.Generator) -> None:
    plan, bar_steps = harmony.plan, harmony.bar_steps
    if plan.bass_voice is None:
        return
    base = 24 if plan.root >= 6 else 36  # keeps the key root between E1 and F2
    for bar in range(bars):
        degree, start = harmony.chord(bar)[0] % 7, bar * bar_steps
        root = harmony.pitch(degree, base)
        if plan.bass_line == "drone":
            if bar % plan.bars_per_chord == 0:
                score.add("bass", start, root, bar_steps * plan.bars_per_chord, 0.9)
        elif plan.bass_line == "octave":
            for s in range(0, bar_steps, 2):
                score.add("bass", start + s, root + 12 * ((s // 2) % 2), 2, 0.9)
        elif plan.bass_line == "walking":  # root, scale steps, chromatic approach to next root
            approach = harmony.pitch(harmony.chord(bar + 1)[0] % 7, base) - 1
            steps = [
                harmony.pitch(degree + int(rng.integers(1, 5)), base) for _ in range(2, plan.meter)
            ]
            for beat, note in enumerate([root, *steps, approach]):
                score.add("bass", start + 4 * beat, note, 4, 0.85)
        elif plan.bass_line == "sparse":
            score.add("bass", start, root, 8, 1.0)
            if rng.random() < 0.6:
                score.add("bass", start + int(rng.choice([7, 10])), root, 5, 0.9)
        else:  # root notes on the beats
            for beat in range(plan.meter):
                if beat == 0 or rng.random() < 0.8:
                    score.add("bass", start + 4 * beat, root, 4, 0.9)


def _compose_drums(plan: TrackPlan, score: _Score, bars: int, rng: np.random.Generator) -> None:
    if plan.groove is None:
        return
    steps, d = plan.meter * STEPS_PER_BEAT, plan.drum_density
    s = np.arange(steps)
    beat, eighth, last = s % 4 == 0, s % 2 == 0, s == steps - 4
    on = {  # per-step hit probabilities for one bar
        "backbeat": {
            "kick": np.where(s == 0, 1, np.where(s == 8, 0.9, eighth * 0.25 * d)),
            "snare": np.where((s == 4) | (s == 12) | (beat & last), 1, 0.08 * d),
            "hihat": np.where(eighth, 1, 0.6 * d),
        },
        "four_floor": {
            "kick": beat * 1.0,
            "snare": np.where((s == 4) | (s == 12), 0.9, 0),
            "hihat": np.where(s % 4 == 2, 1, 0.7 * d * ~eighth),
        },
        "breakbeat": {
            "kick": np.where(s == 0, 1, np.where(s == 10, 0.8, (s == 7) * 0.4 + (s == 3) * 0.3)),
            "snare": np.where((s == 4) | (s == 12), 1, (s == 15) * 0.3 * d),
            "hihat": np.where(eighth, 0.9, 0.5 * d),
        },
        "ride": {"kick": beat * 0.15 * d, "snare": 0.12 * d * eighth, "hihat": beat | (s % 8 == 6)},
        "sparse": {"kick": (s == 0) * 0.8, "snare": (s == 8) * 0.3 * d, "hihat": eighth * 0.3 * d},
    }[plan.groove]
    pattern = {drum: rng.random(steps) < np.asarray(p, dtype=float) for drum, p in on.items()}
    pattern["kick"][0] = True  # every bar starts with a kick: the drums always sound
    for bar in range(bars):
        fill = bar % 4 == 3 and rng.random() < d
        for drum, hits in pattern.items():
            for step in np.flatnonzero(hits | ((s >= steps - 4) & fill & (drum == "snare"))):
                accent = 1.0 if step % 4 == 0 else 0.7
                score.add(drum, bar * steps + int(step), 0, 1, accent * rng.uniform(0.85, 1.0))


def render_stems(plan: TrackPlan, seconds: float, sample_rate: int) -> dict[str, np.ndarray]:
    """Render each sounding instrument of a plan as its own mono stem (before the master bus).

    Returns:
        tag -> float64 array of ``round(seconds * sample_rate)`` samples; the keys are exactly
        the plan's instrument tags.
    """
    rng = np.random.default_rng([plan.seed, GENRES.index(plan.genre), 2])
    beat_seconds = 60.0 / plan.tempo
    n = round(seconds * sample_rate)
    bars = int(np.ceil(seconds / (beat_seconds * plan.meter))) + 1
    score = _compose(plan, bars, rng)
    voices = {"chords": plan.chord_voice, "lead": plan.leads[0], "bass": plan.bass_voice}
    voices.update({f"counter{j}": voice for j, voice in enumerate(plan.leads[1:], start=1)})
    drums = {name: hit(0.7, sample_rate, plan.drum_density, rng) for name, hit in DRUM_HITS}
    cache: dict[tuple[str, int, int], np.ndarray] = {}
    stems: dict[str, np.ndarray] = {}
    for part, events in score.parts.items():
        buf = np.zeros(n)
        for step, midi, length, velocity in events:
            beats = step / STEPS_PER_BEAT
            beats = np.floor(beats) + _swing(beats % 1.0, plan.swing)
            start = round(beats * beat_seconds * sample_rate)
            if start >= n:
                continue
            if part in drums:
                note = drums[part]
            else:
                key = (voices[part], midi, length)
                if key not in cache:
                    voice = voices[part]
                    dur = length * beat_seconds / STEPS_PER_BEAT + RING_SECONDS.get(voice, 0.05)
                    hz = synth.midi_to_hz(midi)
                    cache[key] = synth.PITCHED[voice](hz, dur, sample_rate, plan.brightness, rng)
                note = cache[key]
            stop = min(n, start + len(note))
            buf[start:stop] += velocity * note[: stop - start]
        tag = "drums" if part in drums else "bass" if part == "bass" else voices[part]
        rms = np.sqrt(np.mean(buf**2))
        if rms > 0:
            gain = STEM_RMS[part.rstrip("0123456789")] / rms * 10 ** (rng.uniform(-3, 3) / 20)
            stems[tag] = stems.get(tag, 0.0) + gain * buf
    return stems


def _swing(position: np.ndarray | float, swing: float) -> np.ndarray | float:
    """Warp a position within a beat so the off-beat eighth lands `swing` of a beat late."""
    early = position * (0.5 + swing) / 0.5
    late = 0.5 + swing + (position - 0.5) * (0.5 - swing) / 0.5
    return np.where(position < 0.5, early, late)


def render_track(genre: str, seed: int, seconds: float, sr: int) -> tuple[np.ndarray, list[str]]:
    """Render one track of a genre.

    Args:
        genre: one of :data:`GENRES`.
        seed: any non-negative integer; the same seed gives the same samples.
        seconds: duration; the result has exactly ``round(seconds * sr)`` samples.
        sr: sample rate in Hz.

    Returns:
        (float32 mono waveform peaking below 0 dBFS, tags in :data:`TAGS` order).
    """
    plan = plan_track(genre, seed)
    stems = render_stems(plan, seconds, sr)
    rng = np.random.default_rng([seed, GENRES.index(genre), 3])
    melodic = sum((x for tag, x in stems.items() if tag not in ("drums", "bass")), np.zeros(1))
    rhythm = sum((x for tag, x in stems.items() if tag in ("drums", "bass")), np.zeros(1))
    mix = synth.distort(melodic, plan.drive) + rhythm
    mix = synth.lowpass(mix, 1500.0 * 2 ** (3.5 * plan.brightness), sr)
    mix = synth.smear(mix, sr, wet=plan.reverb, decay=0.3 + 1.5 * plan.reverb, rng=rng)
    edge = np.minimum(np.arange(len(mix)), np.arange(len(mix))[::-1])
    mix = mix * np.minimum(1.0, edge / (0.02 * sr))  # 20 ms fade in and out
    peak = np.abs(mix).max()
    mix = mix / max(peak, 1e-9) * 0.9 * 10 ** (-rng.uniform(0, 6) / 20)
    return mix.astype(np.float32), plan.tags
