r"""Build the real-audio yardstick kit of DESIGN §12 once, into a cache outside the repo.

Run from the repository root (a few minutes on 2 cores; installs missing Debian packages as root):

    make science-kit
    .venv/bin/python bench/science_kit.py [--cache DIR] [--workers 2] [--force]

The cache defaults to ~/.cache/musicoder/realdata, or $MUSICODER_REALDATA. It holds:

    pretrain/<package>/...          unlabeled game soundtracks, copied as shipped (OGG, Opus)
    task_soundtrack/labels.csv      single label: which package a 20 s clip comes from
    task_soundtrack/task.yaml       for launch/finetune.py --task (kind genre)
    task_instruments/labels.csv     multi-label: GM instrument families heard in a rendered score
    task_instruments/task.yaml      for launch/finetune.py --task (kind tagging)
    task_*/fold<k>.csv, fold<k>.yaml  the same task with fold k as test and fold k+1 as valid
    README.md, kit.json             contents, package versions, licences; kit.json is written last

Everything is fixed: package lists, seeds and sorted file lists, so scores compare over time.
Each task's groups (tracks, pieces) are dealt into FOLDS stratified folds; `labels.csv` is
rotation 0 (fold 0 test, fold 1 valid, the rest train) and `fold<k>.csv` rotation k, so a
cross-validated score tests every group once. A second run finds kit.json with this KIT_VERSION
and does nothing; each part is built in a `<part>.partial` folder and renamed when complete, so
an interrupted run resumes by part, and a part whose PART_VERSIONS entry changed is rebuilt
alone (the unlabeled corpus, and the shards and encoders made from it, survive a task change).
Audio never enters the repository.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

log = logging.getLogger("science_kit")

KIT_VERSION = 3
# Version 2: task A over 11 packages (was 4) and 5-fold rotations for both tasks.
# Version 3: the unlabeled corpus over 8 packages (was 4); the labelled tasks are unchanged.
PART_VERSIONS = {"pretrain": 2, "task_soundtrack": 2, "task_instruments": 2}
CACHE_ENV = "MUSICODER_REALDATA"
DEFAULT_CACHE = "~/.cache/musicoder/realdata"
SAMPLE_RATE = 22050
SEED = 12  # every random choice of the kit derives from this
SPLITS = ("train", "valid", "test")
FOLDS = 5  # groups per task dealt into this many folds; rotation k tests fold k, validates k+1
SOURCE_EXTENSIONS = (".ogg", ".opus")
ARCHIVE_EXTENSIONS = (".pk3", ".zip")  # game data archives (zip); their members are listed

# Unlabeled corpus: package -> fragment of the dpkg -L path that marks its music folder.
# nexuiz-music, ufoai-music and 0ad-data ship their tracks inside zips; members are extracted.
PRETRAIN_SOURCES = {
    "wesnoth-1.16-music": "/data/core/music/",
    "warzone2100-music": "/warzone2100/music/",
    "hyperrogue-music": "/hyperrogue/music/",  # not sounds/
    "nexuiz-music": "/nexuiz/data/",
    # Added in kit version 3 (corpus part 2): 8.0 h / 108 tracks became 16.75 h / 278 tracks.
    "0ad-data": "/0ad/mods/public/public.zip/audio/music/",  # orchestral; inside a 3 GB zip
    "ufoai-music": "/ufoai/base/0music.pk3/music/",
    "singularity-music": "/singularity/music/",
    "drascula-music": "/scummvm/drascula/audio/",  # the language folders hold the same files
}
# Task A: label = package; none of these is in the unlabeled corpus.
SOUNDTRACK_SOURCES = {
    "freedroidrpg-data": "/sound/music/",
    "hedgewars-data": "/Data/Music/",
    "planetblupi-music-ogg": "/planetblupi/music/",
    "supertux-data": "/supertux2/music/",
    # Added in kit version 2, so that a class has 10-40 tracks and a test fold is not 2 tracks.
    "extremetuxracer-data": "/etr/music/",
    "fillets-ng-data": "/fillets-ng/music/",
    "flare-game": "/flare/mods/fantasycore/music/",
    "marsshooter-data": "/marsshooter/audio/music/",
    "supertuxkart-data": "/supertuxkart/data/music/",
    "warmux-data": "/warmux/music/",
    "widelands-data": "/widelands/data/music/",
}
SOUNDTRACK_CLIP_SECONDS = 20.0
SOUNDTRACK_MAX_CLIPS = 4  # per track, evenly spaced, so 25-minute tracks do not dominate
SOUNDTRACK_MIN_SECONDS = 30.0  # shorter files are jingles and stingers (supertux: 5-24 s)
# Variants of one tune (cave/cave_old, airship_2/airship_remix, farm/farm_f, celtic/celtic_fast)
# share a fold. One digit only: two-digit numbers are distinct tunes (widelands ingame_00-28).
VARIANT_SUFFIX = re.compile(r"(_old|_remix|_enhanced|_sd|_fast|_f|_\d)$")

# Task B: music21 corpus folder, file type, pieces taken (seeded, from the sorted list).
SCORE_SOURCES = (
    ("bach", ".mxl", 110),
    ("palestrina", ".krn", 60),
    ("monteverdi", ".mxl", 35),
    ("trecento", ".xml", 35),
)
CLIPS_PER_PIECE = 2
SCORE_CLIP_SECONDS = 15.0
BPM_RANGE = (66.0, 132.0)  # quarter notes per minute, drawn per clip
VELOCITY_RANGE = (70, 110)  # drawn per part
MIN_TAG_SECONDS = 1.0  # a family is tagged only when it sounds this long inside the clip
MAX_PARTS = 15  # one MIDI channel per part, drums' channel 10 left out
# family -> (GM program, 0-based; the mean pitch of a part is moved by octaves into [lo, hi])
FAMILIES = {
    "piano": (0, 48, 76),  # Acoustic Grand Piano
    "chromatic_percussion": (11, 62, 80),  # Vibraphone
    "organ": (19, 48, 76),  # Church Organ
    "guitar": (24, 50, 70),  # Acoustic Guitar (nylon)
    "bass": (32, 33, 50),  # Acoustic Bass
    "strings": (48, 45, 78),  # String Ensemble 1
    "brass": (56, 60, 78),  # Trumpet
    "reed": (71, 55, 80),  # Clarinet
    "pipe": (73, 67, 86),  # Flute
}
SOUNDFONT_PACKAGE = "musescore-general-soundfont-small"
SYNTH_PACKAGE = "fluidsynth"
SYNTH_GAIN = 0.6
RENDER_BATCH = 40  # clips per FluidSynth call: the SoundFont loads once per batch
SLOT_GAP_SECONDS = 1.0  # silence between clips in a batch (dry synth, all-sound-off at the end)
PEAK = 0.9  # every rendered clip is peak-normalised, so loudness does not give the family away
MIDI_TICKS_PER_SECOND = 1920  # 960 per quarter at the fixed 120 bpm of the written file

# Licences of the files used, read from /usr/share/doc/<package>/copyright (and the music21
# and SoundFont notes). kit.json also records the DEP-5 stanzas that match each file.
LICENCES = {
    "wesnoth-1.16-music": "GPL-2+ (copyright file is free-form; its licence covers all data)",
    "warzone2100-music": "GPL-2+ (DEP-5 'Files: *')",
    "hyperrogue-music": "CC-BY-SA-3.0 (music/*: Shawn Parrotte, Lincoln Domina, Will Savino)",
    "nexuiz-music": "GPL-2+ (free-form copyright file, Alientrap)",
    "0ad-data": "CC-BY-SA-3.0 (DEP-5 'Files: *', Wildfire Games)",
    "ufoai-music": "GPL-2+ / CC-BY-3.0 / CC-BY-SA-3.0 per track (DEP-5 stanzas per file; "
    "kit.json lists each)",
    "singularity-music": "CC-BY-SA-3.0 (free-form copyright file, Max McCracken)",
    "drascula-music": "Drascula-License, BSD-like (DEP-5 'Files: *', Alcachofa Soft S.L.)",
    "freedroidrpg-data": "GPL-2+ (DEP-5 'Files: *')",
    "hedgewars-data": "GPL-2 (DEP-5 'Files: *'; Data/Music has no stanza of its own)",
    "planetblupi-music-ogg": "GPL-3+ (DEP-5 'Files: *')",
    "supertux-data": "GPL-2+ (DEP-5 'Files: data/music/*', Marek Moeckel)",
    "extremetuxracer-data": "GPL-2+ (DEP-5 stanza covering music/*)",
    "fillets-ng-data": "GPL-2 (free-form copyright file; its licence covers the game data)",
    "flare-game": "CC-BY-SA-3.0+ (DEP-5 stanza covering the fantasycore music)",
    "marsshooter-data": "CC-BY-SA-3.0 (DEP-5 'Files: data/audio/music/*')",
    "supertuxkart-data": "CC-BY-SA-3.0 / CC-BY-SA-4.0 / GPL-3+ per track (DEP-5 stanzas per "
    "file; kit.json lists each)",
    "warmux-data": "GPL-2+ (free-form copyright file; its licence covers the game data)",
    "widelands-data": "GPL-2+, three tracks CC-BY-SA-3.0 (DEP-5 stanzas per file)",
    SOUNDFONT_PACKAGE: "MIT (Fluid R3 Mono, MuseScore_General adaptation); some samples PD / CC0",
    SYNTH_PACKAGE: "LGPL-2.1+ (the renderer; its output carries no licence of its own)",
    "music21": "music21 BSD-3-Clause; corpus encodings distributed with the encoders' "
    "permission, some with non-commercial restrictions (music21/corpus/license.txt)",
}


@dataclass(frozen=True, slots=True)
class Source:
    """One audio file to use: its package, where it lives and its name inside the kit."""

    package: str
    path: str  # installed file, or the zip archive
    relative: str  # path under <part>/<package>/
    member: str | None = None  # zip member inside `path`

    @property
    def installed(self) -> str:
        """Where the file is on disk, a zip member as a path below its archive."""
        return self.path if self.member is None else f"{self.path}/{self.member}"


@dataclass(frozen=True, slots=True)
class ClipPlan:
    """One rendered score clip: notes per part in clip seconds and the tags that sound."""

    clip_id: str
    piece: str
    split: str
    bpm: float
    programs: tuple[int, ...]  # one per part
    velocities: tuple[int, ...]
    notes: tuple[tuple[tuple[float, float, int], ...], ...]  # per part: (start, end, pitch)
    tags: tuple[str, ...]


# ---------------------------------------------------------------- pure helpers (unit-tested)


def fold_groups(strata: dict[str, str], folds: int, *, seed: int) -> dict[str, int]:
    """Seeded stratified assignment of whole groups (tracks, pieces) to `folds` folds.

    Within each stratum (sorted), the sorted groups are shuffled by one generator seeded with
    `seed` and dealt round-robin, continuing where the previous stratum stopped, so every
    stratum is spread evenly and the folds' sizes differ by at most one group.

    Args:
        strata: Group id -> stratum (class, composer).
        folds: Number of folds (>= 3: a rotation needs a test, a valid and a train fold).
        seed: Seed of the shuffle.

    Returns:
        Group id -> fold index; depends only on the mapping, not its order.
    """
    if folds < 3:
        raise ValueError(f"fold_groups: need at least 3 folds, got {folds}")
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for group, stratum in strata.items():
        by_stratum[stratum].append(group)
    out, dealt = {}, 0
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum])
        for i in rng.permutation(len(members)):
            out[members[i]] = dealt % folds
            dealt += 1
    return out


def rotation_split(fold: int, rotation: int, folds: int) -> str:
    """The split of a group in `fold` under `rotation`: test its own fold, valid the next one."""
    return "test" if fold == rotation else "valid" if fold == (rotation + 1) % folds else "train"


def sounding_seconds(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of `(on, off)` intervals inside `[start, end]` (overlaps count once)."""
    total, reach = 0.0, start
    for on, off in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if off > reach:
            total += off - max(on, reach)
            reach = off
    return total


def sounding_tags(
    notes_by_family: dict[str, Iterable[tuple[float, float]]],
    start: float,
    end: float,
    min_seconds: float = MIN_TAG_SECONDS,
) -> list[str]:
    """Families whose notes sound at least `min_seconds` inside `[start, end]`, sorted."""
    return sorted(
        f for f, iv in notes_by_family.items() if sounding_seconds(iv, start, end) >= min_seconds
    )


def clip_starts(duration: float, clip_seconds: float, max_clips: int) -> list[float]:
    """Starts of at most `max_clips` clips, each centred in one of equal parts of the track.

    Returns no starts when the track is shorter than one clip.
    """
    n = min(max_clips, int(duration // clip_seconds))
    centres = [(i + 0.5) * duration / n for i in range(n)]
    return [min(max(0.0, c - clip_seconds / 2), duration - clip_seconds) for c in centres]


def safe_member(name: str) -> PurePosixPath | None:
    """A zip member name as a relative path, or None when it is absolute or leaves its folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        return None
    return path


def fit_register(pitches: Sequence[int], low: float, high: float) -> int:
    """Semitones (whole octaves, smallest move) that bring the mean pitch into `[low, high]`."""
    mean = float(np.mean(pitches)) if len(pitches) else (low + high) / 2
    shift = 0
    while mean + shift < low:
        shift += 12
    while mean + shift > high and mean + shift - 12 >= low - 6:
        shift -= 12
    return shift


def tune_of(relative: str) -> str:
    """The split group of a track: its lower-case file stem without variant suffixes
    (`retro/cave_old.ogg` -> `cave`, `Olympics.ogg` and `olympics_sd.ogg` -> `olympics`)."""
    return VARIANT_SUFFIX.sub("", PurePosixPath(relative).stem.lower())


def dep5_licences(copyright_text: str, installed_path: str) -> list[str]:
    """Licences of the DEP-5 stanza that covers a file (the last match wins), if any.

    Debian's patterns are source-tree paths; an installed path matches when it ends with the
    pattern's last two components (`data/music/*` covers `/usr/share/.../music/x.ogg`).
    """
    found: list[str] = []
    for stanza in re.split(r"\n\s*\n", copyright_text):
        fields = re.findall(r"^(Files|License):[ \t]*(.*(?:\n[ \t]+\S.*)*)", stanza, re.M)
        files = next((v.split() for k, v in fields if k == "Files"), None)
        licence = next(
            ((v.splitlines() or [""])[0].strip() for k, v in fields if k == "License"), ""
        )
        if files and licence and any(_covers(p, installed_path) for p in files):
            found = [licence]
    return found


def _covers(pattern: str, path: str) -> bool:
    tail = "/".join(pattern.split("/")[-2:])
    return pattern == "*" or fnmatch(path, "*/" + tail)


# ---------------------------------------------------------------- Debian packages


def default_cache() -> Path:
    """The kit folder: $MUSICODER_REALDATA, else ~/.cache/musicoder/realdata."""
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser()


def ensure_packages(packages: Sequence[str]) -> None:
    """Installs the Debian packages that are missing (`apt-get install -y`), as root only.

    Raises:
        PermissionError: Some are missing and this process is not root.
        RuntimeError: apt-get failed.
    """
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise PermissionError(
            f"missing Debian packages {' '.join(missing)}: run as root or "
            f"`sudo apt-get install -y {' '.join(missing)}`"
        )
    log.info("installing Debian packages: %s", " ".join(missing))
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # a stale package index is the usual cause: refresh once
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"apt-get install {' '.join(missing)} failed: {result.stderr[-300:]}")


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True
    )
    return result.returncode == 0 and result.stdout.startswith("ii")


def package_files(package: str) -> list[str]:
    """Sorted regular files that `dpkg -L` lists for an installed package."""
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.splitlines() if os.path.isfile(p))


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed version of each package (`dpkg-query -W`)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\n", *packages],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("\t") for line in out.stdout.splitlines())


def list_sources(package: str, folder: str) -> list[Source]:
    """Audio files of a package under its music folder, sorted; zip archives are opened.

    A member of an archive counts as a file below it (`.../0music.pk3/music/a.ogg`), so `folder`
    can reach into an archive; the kit path is what follows `folder`.
    """
    out = []
    for path in package_files(package):
        if path.endswith(ARCHIVE_EXTENSIONS):
            with zipfile.ZipFile(path) as archive:
                for name in sorted(archive.namelist()):
                    if not name.endswith(SOURCE_EXTENSIONS) or folder not in f"{path}/{name}":
                        continue
                    member = safe_member(name)
                    if member is None:
                        log.warning("%s: skipped unsafe member %r", path, name)
                    else:
                        relative = f"{path}/{member}".split(folder, 1)[1]
                        out.append(Source(package, path, relative, name))
        elif folder in path and path.endswith(SOURCE_EXTENSIONS):
            out.append(Source(package, path, path.split(folder, 1)[1]))
    if not out:
        raise FileNotFoundError(f"{package}: no {'/'.join(SOURCE_EXTENSIONS)} files under {folder}")
    return out


def read_source(source: Source) -> bytes:
    """The file's bytes (a zip member's, for archives)."""
    if source.member is None:
        return Path(source.path).read_bytes()
    with zipfile.ZipFile(source.path) as archive:
        return archive.read(source.member)


# ---------------------------------------------------------------- part 1: pre-training corpus


def build_pretrain(out: Path) -> dict:
    """Copies the unlabeled soundtracks to `out/<package>/...`; returns per-package counts."""
    sources = [s for p, f in PRETRAIN_SOURCES.items() for s in list_sources(p, f)]
    rows = []
    for source in tqdm(sources, desc="pretrain copy", unit="file"):
        target = out / source.package / source.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.member is None:
            shutil.copyfile(source.path, target)
        else:
            target.write_bytes(read_source(source))
        seconds = sf.info(str(target)).duration  # from the header; clips below are decoded
        rows.append((f"{source.package}/{source.relative}", source.package, f"{seconds:.2f}"))
    _write_csv(out / "files.csv", ("path", "package", "seconds"), rows)
    return _summary(rows)


def _summary(rows: Sequence[tuple[str, str, str]]) -> dict:
    per: dict[str, dict] = defaultdict(lambda: {"files": 0, "hours": 0.0})
    for _, package, seconds in rows:
        per[package]["files"] += 1
        per[package]["hours"] += float(seconds) / 3600
    per_package = {k: {"files": v["files"], "hours": round(v["hours"], 3)} for k, v in per.items()}
    return {
        "files": len(rows),
        "hours": round(sum(v["hours"] for v in per.values()), 3),
        "per_package": dict(sorted(per_package.items())),
    }


# ---------------------------------------------------------------- part 2: soundtrack task


def cut_track(source: Source, out: str) -> tuple[float, list[str]]:
    """Decodes a track twice (its length, then the clips) and writes the clips as mono FLAC.

    Returns:
        The decoded seconds and the clip files written under `out` (relative paths); none when
        the track is shorter than SOUNDTRACK_MIN_SECONDS.
    """
    data = source.path if source.member is None else io.BytesIO(read_source(source))
    stem = PurePosixPath(source.relative).with_suffix("")
    written = []
    with sf.SoundFile(data) as f:
        frames = sum(len(block) for block in f.blocks(blocksize=1 << 16, dtype="float32"))
        seconds, rate = frames / f.samplerate, f.samplerate
        if seconds < SOUNDTRACK_MIN_SECONDS:
            return seconds, []
        starts = clip_starts(seconds, SOUNDTRACK_CLIP_SECONDS, SOUNDTRACK_MAX_CLIPS)
        for i, start in enumerate(starts):
            f.seek(round(start * rate))
            clip = f.read(round(SOUNDTRACK_CLIP_SECONDS * rate), dtype="float32", always_2d=True)
            mono = soxr.resample(clip.mean(axis=1), rate, SAMPLE_RATE, quality="HQ")  # (samples,)
            relative = f"clips/{source.package}/{stem}_c{i}.flac"
            target = Path(out) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, np.clip(mono, -1, 1), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            written.append(relative)
    return seconds, written


def build_soundtrack(out: Path, workers: int, exclude_hashes: set[str]) -> dict:
    """Task A: clips of whole tracks labelled by package, split over tunes per class."""
    sources, seen = [], set(exclude_hashes)
    for package, folder in SOUNDTRACK_SOURCES.items():
        for source in list_sources(package, folder):
            digest = hashlib.sha256(read_source(source)).hexdigest()
            if digest in seen:
                log.warning("%s: skipped, byte-identical to an earlier file", source.path)
                continue
            seen.add(digest)
            sources.append(source)
    results = _pool_map(
        cut_track, sources, [str(out)] * len(sources), workers, desc="soundtrack clips"
    )
    kept = [(s, sec, clips) for s, (sec, clips) in zip(sources, results, strict=True) if clips]
    for s, (sec, clips) in zip(sources, results, strict=True):
        if not clips:
            log.info(
                "soundtrack: left out %s (%.1f s < %.0f s)", s.path, sec, SOUNDTRACK_MIN_SECONDS
            )
    tunes = {f"{s.package}/{tune_of(s.relative)}": s.package for s, _, _ in kept}
    fold = fold_groups(tunes, FOLDS, seed=SEED)
    rows = []
    for s, _, clips in kept:
        track, k = f"{s.package}/{s.relative}", fold[f"{s.package}/{tune_of(s.relative)}"]
        rows += [(c, rotation_split(k, 0, FOLDS), s.package, track, k) for c in clips]
    _check_folds("soundtrack", [(r[4], (r[2],)) for r in rows], SOUNDTRACK_SOURCES)
    _write_csv(out / "labels.csv", ("path", "split", "label", "track", "fold"), rows)
    tracks = Counter((fold[f"{s.package}/{tune_of(s.relative)}"], s.package) for s, _, _ in kept)
    clips = Counter((r[4], r[2]) for r in rows)
    return {
        "tracks": len(kept),
        "clips": len(rows),
        "hours": round(len(rows) * SOUNDTRACK_CLIP_SECONDS / 3600, 3),
        "source_hours": round(sum(sec for _, sec, _ in kept) / 3600, 3),
        "left_out_short": len(sources) - len(kept),
        "tracks_per_fold": {
            label: [tracks[k, label] for k in range(FOLDS)] for label in sorted(SOUNDTRACK_SOURCES)
        },
        "clips_per_fold": [
            sum(clips[k, label] for label in SOUNDTRACK_SOURCES) for k in range(FOLDS)
        ],
    }


def _check_folds(task: str, rows: Iterable[tuple[int, Sequence[str]]], labels: Iterable[str]):
    """Every label must occur in every fold, so each rotation has it in train, valid and test."""
    seen = {(k, label) for k, row_labels in rows for label in row_labels}
    missing = [(k, label) for k in range(FOLDS) for label in labels if (k, label) not in seen]
    if missing:
        raise RuntimeError(f"{task} task: (fold, label) pairs without a clip: {missing}")


def write_rotations(folder: Path, name: str, kind: str) -> list[Path]:
    """Writes `fold<k>.csv` (labels.csv with rotation k's splits) and `fold<k>.yaml` per fold."""
    with (folder / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    yamls = []
    for rotation in range(FOLDS):
        for row in rows:
            row["split"] = rotation_split(int(row["fold"]), rotation, FOLDS)
        _write_csv(folder / f"fold{rotation}.csv", header, ([r[h] for h in header] for r in rows))
        yamls.append(_write_task_yaml(folder, name, kind, rotation))
    return yamls


# ---------------------------------------------------------------- part 3: instrument task


def read_piece(path: str) -> list[list[tuple[float, float, int]]]:
    """Notes per part of a music21 corpus file, `(onset, offset, midi pitch)` in quarter notes."""
    from music21 import corpus

    warnings.simplefilter("ignore")
    score = corpus.parse(path, forceSource=True)
    parts = []
    for part in score.parts:
        notes = []
        for n in part.flatten().stripTies().notes:
            on, length = float(n.offset), float(n.duration.quarterLength)
            if length > 0:  # grace notes have none
                notes += [(on, on + length, p.midi) for p in getattr(n, "pitches", ())]
        if notes:
            parts.append(sorted(notes))
    return parts


def select_pieces(workers: int) -> dict[str, list[list[tuple[float, float, int]]]]:
    """The fixed piece list: per source, seeded order over its sorted corpus files, the first
    ones with at least two sounding parts and long enough for a clip at the fastest tempo."""
    from music21 import corpus

    root, rng = Path(corpus.__file__).parent, np.random.default_rng(SEED)
    min_quarters = SCORE_CLIP_SECONDS * BPM_RANGE[1] / 60 + 4
    chosen: dict[str, list] = {}
    for folder, suffix, count in SCORE_SOURCES:
        files = sorted(
            str(p)
            for p in corpus.getPaths()
            if Path(p).suffix == suffix and Path(p).is_relative_to(root / folder)
        )
        order = [files[i] for i in rng.permutation(len(files))]
        taken, start = 0, 0
        while taken < count and start < len(order):
            batch = order[start : start + count - taken + 4]
            start += len(batch)
            for path, parts in zip(
                batch, _pool_map(read_piece, batch, None, workers, desc=folder), strict=True
            ):
                long_enough = parts and max(e for p in parts for _, e, _ in p) >= min_quarters
                if taken < count and 2 <= len(parts) <= MAX_PARTS and long_enough:
                    chosen[str(Path(path).relative_to(root))] = parts
                    taken += 1
        if taken < count:
            raise ValueError(f"music21 corpus {folder}: only {taken} usable pieces, want {count}")
    return chosen


def plan_clip(
    piece: str, parts: list[list[tuple[float, float, int]]], index: int, split: str, seed: int
) -> ClipPlan | None:
    """Draws one clip: tempo, 1-3 families over the parts, a window; tags what sounds >= 1 s."""
    rng = np.random.default_rng(
        [seed, int(hashlib.sha256(piece.encode()).hexdigest()[:8], 16), index]
    )
    bpm = float(rng.uniform(*BPM_RANGE))
    names = sorted(FAMILIES)
    chosen = [
        names[i]
        for i in rng.choice(len(names), min(len(parts), int(rng.integers(1, 4))), replace=False)
    ]
    order = rng.permutation(len(parts))
    family_of = {
        int(p): chosen[i] if i < len(chosen) else chosen[int(rng.integers(len(chosen)))]
        for i, p in enumerate(order)
    }
    to_s = 60.0 / bpm
    onsets = sorted({on * to_s for part in parts for on, _, _ in part})
    last = max(off for part in parts for _, off, _ in part) * to_s
    candidates = [t for t in onsets if t <= last - SCORE_CLIP_SECONDS] or [0.0]
    w0 = float(candidates[int(rng.integers(len(candidates)))])
    programs, velocities, notes, by_family = [], [], [], defaultdict(list)
    for i, part in enumerate(parts):
        family = family_of[i]
        program, low, high = FAMILIES[family]
        shift = fit_register([p for _, _, p in part], low, high)
        clipped = tuple(
            (
                round(max(on * to_s - w0, 0.0), 4),
                round(min(off * to_s - w0, SCORE_CLIP_SECONDS), 4),
                min(max(pitch + shift, 21), 108),
            )
            for on, off, pitch in part
            if off * to_s > w0 and on * to_s < w0 + SCORE_CLIP_SECONDS
        )
        clipped = tuple(n for n in clipped if n[1] - n[0] >= 0.02)
        programs.append(program)
        velocities.append(int(rng.integers(VELOCITY_RANGE[0], VELOCITY_RANGE[1] + 1)))
        notes.append(clipped)
        by_family[family] += [(a, b) for a, b, _ in clipped]
    tags = sounding_tags(by_family, 0.0, SCORE_CLIP_SECONDS)
    if not tags:
        return None
    clip_id = f"{PurePosixPath(piece).with_suffix('')}_{index}".replace("/", "_")
    return ClipPlan(
        clip_id,
        piece,
        split,
        round(bpm, 2),
        tuple(programs),
        tuple(velocities),
        tuple(notes),
        tuple(tags),
    )


def write_midi(plans: Sequence[ClipPlan], path: str) -> None:
    """One MIDI file holding the clips back to back, one slot of clip + gap seconds each.

    Each part gets its own channel (never 10, the drum channel), so unison voices do not cut
    each other's notes; every slot starts with program changes and ends with all-sound-off.
    """
    from music21 import midi

    slot = SCORE_CLIP_SECONDS + SLOT_GAP_SECONDS
    channels = [c for c in range(1, 17) if c != 10]
    events: list[tuple[int, int, int, int, int, int]] = []  # tick, order, kind, channel, a, b
    cc, prog, off, on = 0xB0, 0xC0, 0x80, 0x90
    for k, plan in enumerate(plans):
        base = round(k * slot * MIDI_TICKS_PER_SECOND)
        end = base + round(SCORE_CLIP_SECONDS * MIDI_TICKS_PER_SECOND)
        for ch, program, velocity, part in zip(
            channels[: len(plan.notes)], plan.programs, plan.velocities, plan.notes, strict=True
        ):
            events.append((base, 0, prog, ch, program, 0))
            for a, b, pitch in part:
                events.append((base + round(a * MIDI_TICKS_PER_SECOND), 2, on, ch, pitch, velocity))
                events.append((base + round(b * MIDI_TICKS_PER_SECOND), 1, off, ch, pitch, 0))
        events += [(end, 3, cc, ch, 120, 0) for ch in range(1, 17)]  # all sound off
    events.append((round(len(plans) * slot * MIDI_TICKS_PER_SECOND), 4, cc, 1, 121, 0))
    events.sort()
    track = midi.MidiTrack(0)
    tempo = midi.MidiEvent(track, type=midi.MetaEvents.SET_TEMPO)
    tempo.data = midi.putNumber(500_000, 3)  # 120 bpm: 960 ticks per quarter = 1920 per second
    track.events += [midi.DeltaTime(track, time=0), tempo]
    now = 0
    for tick, _, kind, channel, a, b in events:
        event = midi.MidiEvent(track, type=midi.ChannelVoiceMessages(kind), channel=channel)
        if kind == prog:
            event.data = a
        else:
            event.parameter1, event.parameter2 = a, b
        track.events += [midi.DeltaTime(track, time=tick - now), event]
        now = tick
    end = midi.MidiEvent(track, type=midi.MetaEvents.END_OF_TRACK)
    end.data = b""
    track.events += [midi.DeltaTime(track, time=0), end]
    mf = midi.MidiFile()
    mf.ticksPerQuarterNote = MIDI_TICKS_PER_SECOND // 2
    mf.tracks.append(track)
    mf.open(path, "wb")
    mf.write()
    mf.close()


def render_batch(plans: Sequence[ClipPlan], out: str) -> list[str]:
    """Renders a batch with FluidSynth (dry: no reverb or chorus) and writes one FLAC per clip."""
    soundfont = find_soundfont()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        write_midi(plans, f"{tmp}/batch.mid")
        cmd = [
            "fluidsynth",
            "-ni",
            "-q",
            "-R",
            "0",
            "-C",
            "0",
            "-F",
            f"{tmp}/batch.wav",
            "-r",
            str(SAMPLE_RATE),
            "-g",
            str(SYNTH_GAIN),
            "-o",
            "audio.file.format=float",
            soundfont,
            f"{tmp}/batch.mid",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"fluidsynth failed ({result.returncode}): {result.stderr[-300:]}")
        audio, rate = sf.read(f"{tmp}/batch.wav", dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE, rate
    audio = audio.mean(axis=1)
    slot, length = SCORE_CLIP_SECONDS + SLOT_GAP_SECONDS, round(SCORE_CLIP_SECONDS * SAMPLE_RATE)
    written = []
    for k, plan in enumerate(plans):
        start = round(k * slot * SAMPLE_RATE)
        clip = np.zeros(length, np.float32)
        piece = audio[start : start + length]
        clip[: len(piece)] = piece
        peak = float(np.abs(clip).max())
        if peak < 1e-4:
            raise RuntimeError(f"clip {plan.clip_id} rendered silent; its notes: {plan.notes}")
        clip *= PEAK / peak
        relative = f"clips/{plan.clip_id}.flac"
        sf.write(Path(out) / relative, clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        written.append(relative)
    return written


def find_soundfont() -> str:
    """The MuseScore General SoundFont file of its Debian package."""
    fonts = [p for p in package_files(SOUNDFONT_PACKAGE) if p.endswith((".sf2", ".sf3"))]
    if not fonts:
        raise FileNotFoundError(f"{SOUNDFONT_PACKAGE}: no .sf2/.sf3 file in dpkg -L")
    return fonts[0]


def build_instruments(out: Path, workers: int) -> dict:
    """Task B: score clips in random GM orchestrations, tagged by what sounds, split by piece."""
    pieces = select_pieces(workers)
    fold = fold_groups({p: p.split("/")[0] for p in pieces}, FOLDS, seed=SEED)
    plans = [
        plan_clip(p, parts, i, rotation_split(fold[p], 0, FOLDS), SEED)
        for p, parts in sorted(pieces.items())
        for i in range(CLIPS_PER_PIECE)
    ]
    plans = [p for p in plans if p is not None]
    (out / "clips").mkdir(parents=True, exist_ok=True)
    batches = [plans[i : i + RENDER_BATCH] for i in range(0, len(plans), RENDER_BATCH)]
    _pool_map(render_batch, batches, [str(out)] * len(batches), workers, desc="render batches")
    rows = [
        (f"clips/{p.clip_id}.flac", p.split, ";".join(p.tags), p.piece, p.bpm, fold[p.piece])
        for p in plans
    ]
    _check_folds("instrument", [(fold[p.piece], p.tags) for p in plans], FAMILIES)
    _write_csv(out / "labels.csv", ("path", "split", "tags", "piece", "bpm", "fold"), rows)
    counts = Counter((fold[p.piece], t) for p in plans for t in p.tags)
    return {
        "pieces_per_fold": [sum(v == k for v in fold.values()) for k in range(FOLDS)],
        "clips_per_fold": [sum(fold[p.piece] == k for p in plans) for k in range(FOLDS)],
        "hours": round(len(plans) * SCORE_CLIP_SECONDS / 3600, 3),
        "tags_per_fold": {t: [counts[k, t] for k in range(FOLDS)] for t in sorted(FAMILIES)},
        "piece_list": sorted(pieces),
    }


# ---------------------------------------------------------------- kit assembly


def _pool_map(
    fn: Callable, items: Sequence, extra: Sequence | None, workers: int, *, desc: str
) -> list:
    """`fn(item[, extra])` over `items` in a pool of `workers` processes, in order, with a bar."""
    args = [items] if extra is None else [items, extra]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, *args), total=len(items), desc=desc, unit="item"))


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_task_yaml(folder: Path, name: str, kind: str, rotation: int | None = None) -> Path:
    """`task.yaml` over labels.csv, or `fold<k>.yaml` over fold<k>.csv for a rotation."""
    stem = "task" if rotation is None else f"fold{rotation}"
    labels = folder / ("labels.csv" if rotation is None else f"fold{rotation}.csv")
    what = (
        "" if rotation is None else f"; fold {rotation} test, fold {(rotation + 1) % FOLDS} valid"
    )
    path = folder / f"{stem}.yaml"
    path.write_text(
        f"# Real-audio yardstick task, written by bench/science_kit.py (kit version {KIT_VERSION}"
        f"{what}):\n"
        f"#   python launch/finetune.py --encoder DIR --task {path} --baselines --output runs/{name}\n"
        f"name: {name}\n"
        f"kind: {kind}\n"
        "source: csv\n"
        f"path: {labels}   # absolute: task paths resolve against the working dir\n"
    )
    return path


def _build_part(folder: Path, build: Callable[[Path], dict]) -> dict:
    """Builds one part in `<folder>.partial` and renames it; a finished part of the current
    PART_VERSIONS entry is reused, an older one replaced once the new one is complete."""
    summary, version = folder / "summary.json", PART_VERSIONS[folder.name]
    if summary.exists():
        built = json.loads(summary.read_text())
        if built.get("part_version", 1) == version:
            log.info("%s: already built", folder.name)
            return built
        log.info(
            "%s: version %s, rebuilding as %d", folder.name, built.get("part_version", 1), version
        )
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    result = {
        **build(partial),
        "part_version": version,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (partial / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    log.info("%s: built in %.0f s", folder.name, result["build_seconds"])
    return result


def _licence_table(sources: dict[str, list[Source]]) -> dict:
    table = {}
    for package, files in sources.items():
        text = Path(f"/usr/share/doc/{package}/copyright").read_text(errors="replace")
        dep5 = sorted({lic for s in files for lic in dep5_licences(text, s.installed)})
        table[package] = {
            "licence": LICENCES[package],
            "dep5_stanzas": dep5 or None,
            "copyright_file": f"/usr/share/doc/{package}/copyright",
        }
    for name in (SOUNDFONT_PACKAGE, SYNTH_PACKAGE, "music21"):
        table[name] = {"licence": LICENCES[name]}
    return table


def _readme(kit: dict) -> str:
    pre, a, b = (
        kit["parts"]["pretrain"],
        kit["parts"]["task_soundtrack"],
        kit["parts"]["task_instruments"],
    )
    lines = [
        f"# MusiCoder real-audio yardstick kit (version {kit['version']})",
        "",
        "Built by `bench/science_kit.py` (DESIGN §12). Do not edit: rebuild with `--force`.",
        "",
        f"- `pretrain/`: {pre['files']} files, {pre['hours']} h of game soundtracks as shipped.",
        f"- `task_soundtrack/`: {a['clips']} clips of {SOUNDTRACK_CLIP_SECONDS:.0f} s from "
        f"{a['tracks']} tracks of {len(SOUNDTRACK_SOURCES)} packages; label = Debian package; "
        "folds over whole tunes.",
        f"- `task_instruments/`: {sum(b['clips_per_fold'])} clips of {SCORE_CLIP_SECONDS:.0f} s "
        "rendered from music21 scores; tags = GM families sounding >= 1 s; folds over pieces.",
        f"- Each task's groups are dealt into {FOLDS} stratified folds (`fold` column); "
        "`labels.csv` / `task.yaml` test fold 0 and validate on fold 1, `fold<k>.csv` / "
        "`fold<k>.yaml` test fold k and validate on fold k+1.",
        "",
        "## Use",
        "",
        "```",
        f"python launch/shard.py --input {kit['cache']}/pretrain --output shards/realdata",
        *[
            f"python launch/finetune.py --encoder DIR --task {kit['cache']}/{t}/task.yaml "
            f"--baselines --output runs/{t}"
            for t in ("task_soundtrack", "task_instruments")
        ],
        "```",
        "",
        "## Versions",
        "",
        *[f"- {p} {v}" for p, v in kit["versions"].items()],
        "",
        "## Licences",
        "",
        *[f"- {p}: {v['licence']}" for p, v in kit["licences"].items()],
        "",
        "## Counts",
        "",
        "```json",
        json.dumps(kit["parts"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def build_kit(cache: Path, *, workers: int = 2, force: bool = False) -> dict[str, Path]:
    """Builds the kit under `cache` unless kit.json says it is complete.

    Args:
        cache: Kit folder (created).
        workers: Worker processes for decoding and rendering.
        force: Delete the kit's own folders and build again.

    Returns:
        Paths: `pretrain` (audio folder), `soundtrack_csv`, `instruments_csv`, the two task
        YAMLs and `kit_json`.

    Raises:
        ValueError: An existing kit of another version (rebuild with `force`).
        PermissionError, RuntimeError: Debian packages missing and not installable.
    """
    cache = cache.expanduser().resolve()
    paths = {
        "pretrain": cache / "pretrain",
        "soundtrack_csv": cache / "task_soundtrack" / "labels.csv",
        "soundtrack_yaml": cache / "task_soundtrack" / "task.yaml",
        "instruments_csv": cache / "task_instruments" / "labels.csv",
        "instruments_yaml": cache / "task_instruments" / "task.yaml",
        "kit_json": cache / "kit.json",
    }
    if force:
        for name in ("kit.json", "README.md"):
            (cache / name).unlink(missing_ok=True)
        for name in ("pretrain", "task_soundtrack", "task_instruments"):
            for folder in (cache / name, cache / f"{name}.partial"):
                shutil.rmtree(folder, ignore_errors=True)
    if paths["kit_json"].exists():
        version = json.loads(paths["kit_json"].read_text()).get("version")
        if version == KIT_VERSION:
            log.info("kit complete at %s (version %d); nothing to do", cache, KIT_VERSION)
            return paths
        if not isinstance(version, int) or version > KIT_VERSION:
            raise ValueError(
                f"{paths['kit_json']}: kit version {version}, this builder makes "
                f"{KIT_VERSION}; rerun with --force to rebuild"
            )
        log.info("kit version %d at %s: updating the parts that changed", version, cache)
    if importlib.util.find_spec("music21") is None:
        raise RuntimeError("music21 is not installed: pip install -e '.[science]'")
    started = time.monotonic()
    packages = [*PRETRAIN_SOURCES, *SOUNDTRACK_SOURCES, SOUNDFONT_PACKAGE, SYNTH_PACKAGE]
    ensure_packages(packages)
    if shutil.which("fluidsynth") is None:
        raise FileNotFoundError("fluidsynth: not on PATH although its package is installed")
    cache.mkdir(parents=True, exist_ok=True)
    pretrain = _build_part(paths["pretrain"], build_pretrain)
    pretrain_hashes = {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in paths["pretrain"].rglob("*")
        if p.suffix in SOURCE_EXTENSIONS
    }
    soundtrack = _build_part(
        cache / "task_soundtrack", lambda out: build_soundtrack(out, workers, pretrain_hashes)
    )
    instruments = _build_part(
        cache / "task_instruments", lambda out: build_instruments(out, workers)
    )
    for folder, name, kind in (
        (cache / "task_soundtrack", "soundtrack", "genre"),
        (cache / "task_instruments", "instruments", "tagging"),
    ):
        _write_task_yaml(folder, name, kind)
        write_rotations(folder, name, kind)
    import music21

    sources = {p: list_sources(p, f) for p, f in {**PRETRAIN_SOURCES, **SOUNDTRACK_SOURCES}.items()}
    kit = {
        "version": KIT_VERSION,
        "cache": str(cache),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
        "sample_rate": SAMPLE_RATE,
        "seed": SEED,
        "parts": {
            "pretrain": pretrain,
            "task_soundtrack": soundtrack,
            "task_instruments": instruments,
        },
        "versions": {**package_versions(packages), "music21": music21.__version__},
        "soundfont": find_soundfont(),
        "licences": _licence_table(sources),
    }
    (cache / "README.md").write_text(_readme(kit))
    tmp = paths["kit_json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(kit, indent=2) + "\n")
    tmp.rename(paths["kit_json"])  # written last: its presence means the kit is complete
    log.info("kit built at %s in %.0f s", cache, kit["build_seconds"])
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: `python bench/science_kit.py [--cache DIR] [--workers N] [--force]`."""
    first, _, rest = (__doc__ or "").strip().partition("\n")
    parser = argparse.ArgumentParser(
        description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        help=f"kit folder (default: ${CACHE_ENV} or {DEFAULT_CACHE})",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--force", action="store_true", help="delete the kit and build it again")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        paths = build_kit(args.cache, workers=max(1, args.workers), force=args.force)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
