"""Write a demo corpus: audio files in mixed formats, `labels.csv` and `corpus.json`.

Layout under ``out_dir`` (a local path or storage URI)::

    audio/00000.wav ...   tracks, formats cycling wav/flac/ogg/mp3 within each genre
    labels.csv            generic task CSV (DESIGN §11): path,split,label,tags
    corpus.json           parameters and counts, written LAST: its presence means complete

A second call with the same parameters finds ``corpus.json`` and every file it lists, and
reuses the corpus instead of rendering it again. Rendering is deterministic, so a rerun after
an interruption produces the same files. The format is cycled within each genre so that the
codec never gives the genre away.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import logging
import multiprocessing
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from musicoder import storage
from musicoder.demo_corpus.render import render_track
from musicoder.demo_corpus.styles import GENRES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when rendering changes, so old corpora are regenerated
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # all MP3 allows
SPLIT_FRACTIONS = {"valid": 0.15, "test": 0.15}  # the rest is train, per genre
LABELS_NAME, SUMMARY_NAME, AUDIO_DIR = "labels.csv", "corpus.json", "audio"
_TRACK_NAME = re.compile(r"^(\d{5,})\.(wav|flac|ogg|mp3)$")


@dataclass
class CorpusSummary:
    """What a corpus holds; also the content of ``corpus.json`` (without ``reused``)."""

    out_dir: str
    labels: str  # URI of labels.csv
    num_tracks: int
    seconds: float
    seed: int
    sample_rate: int
    hours: float
    genres: dict[str, int]
    tags: dict[str, int]
    formats: dict[str, int]
    splits: dict[str, int]
    files: list[str]  # relative to out_dir
    render_seconds: float = 0.0  # wall time spent rendering and encoding (0 when reused)
    reused: bool = False
    format_version: int = FORMAT_VERSION


def track_seed(seed: int, index: int) -> int:
    """The render seed of track `index` in a corpus with seed `seed` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def assign_splits(genres: list[str], seed: int) -> list[str]:
    """Split tracks into train/valid/test, stratified by genre, deterministically from a seed.

    Each genre with at least 3 tracks gets at least one valid and one test track.
    """
    splits = ["train"] * len(genres)
    rng = np.random.default_rng([seed, 7])
    for genre in sorted(set(genres)):
        members = [i for i, g in enumerate(genres) if g == genre]
        order = [members[j] for j in rng.permutation(len(members))]
        cut = 0
        for split, fraction in SPLIT_FRACTIONS.items():
            count = max(1, round(fraction * len(members))) if len(members) >= 3 else 0
            for i in order[cut : cut + count]:
                splits[i] = split
            cut += count
    return splits


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode mono float samples as a whole file in one of :data:`FORMATS`."""
    container, subtype = FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def track_genre(index: int) -> str:
    """Genre of track `index`: the genres take turns, so any prefix of a corpus is balanced."""
    return GENRES[index % len(GENRES)]


def track_path(index: int) -> str:
    """Path of track `index` relative to the corpus folder; the format cycles within each genre."""
    fmt = list(FORMATS)[(index // len(GENRES)) % len(FORMATS)]
    return f"{AUDIO_DIR}/{index:05d}.{fmt}"


def write_track(out_dir: str, index: int, *, seconds: float, seed: int, sample_rate: int) -> str:
    """Render track `index` of a corpus, write it under `out_dir`; return its tags, ';'-joined."""
    samples, tags = render_track(track_genre(index), track_seed(seed, index), seconds, sample_rate)
    rel = track_path(index)
    data = encode(samples, sample_rate, rel.rsplit(".", 1)[1])
    storage.write_bytes(storage.join(out_dir, rel), data)
    return ";".join(tags)


def generate_corpus(
    out_dir: str,
    *,
    num_tracks: int,
    seconds: float,
    seed: int,
    sample_rate: int = 22050,
    workers: int = 1,
) -> CorpusSummary:
    """Render a demo corpus into `out_dir`, or reuse a complete one with the same parameters.

    Args:
        out_dir: local folder or storage URI.
        num_tracks: number of tracks, spread evenly over :data:`GENRES` (track i has genre
            ``GENRES[i % 6]``).
        seconds: length of every track.
        seed: corpus seed; everything (audio, tags, splits) follows from it.
        sample_rate: one of :data:`SAMPLE_RATES` (the rates MP3 supports), e.g. 22050 or 44100.
        workers: processes that render in parallel (the result does not depend on it). They
            are spawned, so a script calling this needs the ``if __name__ == "__main__":`` guard.

    Returns:
        The corpus summary (``reused`` tells whether the files were already there).

    Raises:
        ValueError: non-positive sizes or an unsupported sample rate.
    """
    if num_tracks < 1 or seconds <= 0:
        raise ValueError(f"num_tracks, seconds: must be positive, got {num_tracks}, {seconds}")
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate: must be one of {SAMPLE_RATES}, got {sample_rate}")
    params = {
        "num_tracks": num_tracks,
        "seconds": float(seconds),
        "seed": seed,
        "sample_rate": sample_rate,
        "format_version": FORMAT_VERSION,
    }
    reused = _reuse(out_dir, params)
    if reused is not None:
        log.info("demo corpus in %s is complete (%d tracks), reusing it", out_dir, num_tracks)
        return reused
    storage.delete(storage.join(out_dir, SUMMARY_NAME))  # incomplete until written again
    started = time.perf_counter()
    genres = [track_genre(i) for i in range(num_tracks)]
    splits = assign_splits(genres, seed)
    write = functools.partial(
        write_track, out_dir, seconds=seconds, seed=seed, sample_rate=sample_rate
    )
    rows = []
    with contextlib.ExitStack() as stack:
        mapper = map
        if workers > 1 and num_tracks > 1:  # spawn: forking a process with torch threads can hang
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(min(workers, num_tracks), mp_context=context)
            mapper = functools.partial(stack.enter_context(pool).map, chunksize=2)
        for i, tags in enumerate(mapper(write, range(num_tracks))):
            row = {"path": track_path(i), "split": splits[i], "label": genres[i], "tags": tags}
            rows.append(row)
            if (i + 1) % 25 == 0 or i + 1 == num_tracks:
                log.info("demo corpus: %d/%d tracks", i + 1, num_tracks)
    _delete_stale(out_dir, {row["path"] for row in rows})
    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=["path", "split", "label", "tags"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(storage.join(out_dir, LABELS_NAME), text.getvalue())
    summary = CorpusSummary(
        out_dir=out_dir,
        labels=storage.join(out_dir, LABELS_NAME),
        num_tracks=num_tracks,
        seconds=float(seconds),
        seed=seed,
        sample_rate=sample_rate,
        hours=num_tracks * seconds / 3600,
        genres=dict(Counter(genres)),
        tags=dict(Counter(t for row in rows for t in row["tags"].split(";") if t)),
        formats=dict(Counter(row["path"].rsplit(".", 1)[1] for row in rows)),
        splits=dict(Counter(splits)),
        files=[row["path"] for row in rows],
        render_seconds=time.perf_counter() - started,
    )
    record = dataclasses.asdict(summary)
    del record["reused"], record["out_dir"], record["labels"]
    storage.write_json(storage.join(out_dir, SUMMARY_NAME), record)
    return summary


def _reuse(out_dir: str, params: dict) -> CorpusSummary | None:
    """The summary of a complete corpus with these parameters in out_dir, else None."""
    summary_uri = storage.join(out_dir, SUMMARY_NAME)
    if not storage.exists(summary_uri):
        return None
    try:
        record = storage.read_json(summary_uri)
        summary = CorpusSummary(
            out_dir=out_dir, labels=storage.join(out_dir, LABELS_NAME), reused=True, **record
        )
    except (ValueError, TypeError) as e:
        log.warning("%s: unreadable (%s); regenerating the corpus", summary_uri, e)
        return None
    if any(getattr(summary, key) != value for key, value in params.items()):
        return None
    needed = [LABELS_NAME, *summary.files]
    if len(summary.files) != summary.num_tracks or not all(
        storage.exists(storage.join(out_dir, rel)) for rel in needed
    ):
        return None
    summary.render_seconds = 0.0
    return summary


def _delete_stale(out_dir: str, keep: set[str]) -> None:
    """Remove track files of an earlier, larger or different corpus (only our own file names)."""
    audio_dir = storage.join(out_dir, AUDIO_DIR)
    for info in storage.list_objects(audio_dir, recursive=False):
        name = storage.basename(info.uri)
        if _TRACK_NAME.match(name) and f"{AUDIO_DIR}/{name}" not in keep:
            storage.delete(info.uri)
