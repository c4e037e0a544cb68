"""Procedural demo corpus: music-like tracks in six overlapping genres, with tags and splits.

The embedded default data set that `make demo` and the tests use, so the whole platform runs
and shows learning without downloading music. Deterministic from a seed, rendered in numpy at
well over 50x realtime per core.

- :mod:`.synth`: instrument voices (additive, Karplus-Strong, FM, noise drums) and effects.
- :mod:`.styles`: genres as style distributions, :func:`plan_track`, the tag vocabulary.
- :mod:`.render`: plan -> score -> stems -> mixed track (:func:`render_track`).
- :mod:`.writer`: mixed wav/flac/ogg/mp3 files, ``labels.csv`` and ``corpus.json``
  (:func:`generate_corpus`).
"""

from musicoder.demo_corpus.render import render_stems, render_track
from musicoder.demo_corpus.styles import GENRES, INSTRUMENTS, TAGS, TrackPlan, plan_track
from musicoder.demo_corpus.writer import (
    FORMATS,
    LABELS_NAME,
    SAMPLE_RATES,
    SUMMARY_NAME,
    CorpusSummary,
    generate_corpus,
    track_seed,
)

__all__ = [
    "FORMATS",
    "GENRES",
    "INSTRUMENTS",
    "LABELS_NAME",
    "SAMPLE_RATES",
    "SUMMARY_NAME",
    "TAGS",
    "CorpusSummary",
    "TrackPlan",
    "generate_corpus",
    "plan_track",
    "render_stems",
    "render_track",
    "track_seed",
]
