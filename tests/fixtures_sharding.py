"""Sharding test fixtures (a pytest plugin module): one Ray, one awkward corpus, one shard run.

- ``ray_local``: one in-process local Ray (2 CPUs, no dashboard) for the whole session; yields
  its GCS address so subprocess drivers (``launch/shard.py``) can join it via ``RAY_ADDRESS``.
- ``shard_corpus``: every case of ``fixtures_audio.AUDIO_CASES`` plus good tracks in nested
  folders (same basename twice, upper-case extension), a duplicate by symlink, dangling and
  looping symlinks, a directory symlink to its parent, and a CSV list input that names a file
  outside the folder and one that is gone by the time it is processed (its size is given in the
  CSV, so it passes planning). ``expected`` maps every unique input URI to its outcome.
- ``shard_run``: that corpus sharded once with :data:`RUN_ARGS`; tests only read its output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fixtures_audio import AudioCases, write_tone

# The shared run's parameters, as CLI flags (the ray-job and kill tests repeat them exactly).
SEGMENT_SECONDS = 2.5
SHARD_MB = 0.2
VAL_FRACTION = 0.3
RUN_ARGS = [
    "--segment-seconds",
    str(SEGMENT_SECONDS),
    "--shard-size",
    str(SHARD_MB),
    "--val-fraction",
    str(VAL_FRACTION),
    "--keep-audio",
]
GOOD_TRACKS = {  # relative path -> (seconds, sample rate, channels)
    "a/track.wav": (4.0, 44100, 1),
    "b/track.wav": (5.0, 22050, 2),
    "c/song.FLAC": (6.0, 48000, 1),
    "c/tune.ogg": (3.5, 44100, 2),
    "d/deep/er/piece.flac": (7.0, 32000, 1),
}
MISSING_REASON_ERROR = "FileNotFoundError"


@dataclass
class ShardCorpus:
    """The generated corpus: what to pass as inputs and what must happen to every file."""

    root: Path
    inputs: list[str]
    expected: dict[str, str | None] = field(default_factory=dict)  # uri -> error class or None
    truncated: set[str] = field(default_factory=set)  # accepted with a salvaged prefix
    duplicates: set[str] = field(default_factory=set)  # URIs dropped as duplicates

    @property
    def accepted(self) -> set[str]:
        return {u for u, e in self.expected.items() if e is None}


def is_val(uri: str, fraction: float = VAL_FRACTION) -> bool:
    """The documented hold-out rule, recomputed independently of the planner."""
    h = int.from_bytes(hashlib.blake2b(b"val\0" + uri.encode(), digest_size=8).digest(), "little")
    return h / 2.0**64 < fraction


def sharding_env(gcs_address: str) -> dict[str, str]:
    """Environment for a subprocess driver joining the session's Ray."""
    env = dict(os.environ, RAY_ADDRESS=gcs_address, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
    return env


def make_shard_corpus(root: Path, cases: AudioCases) -> ShardCorpus:
    """Write the corpus described in the module docstring under ``root``."""
    music = root / "music"
    corpus = ShardCorpus(root=root, inputs=[str(music), str(root / "list.csv")])
    for i, (rel, (seconds, sr, channels)) in enumerate(sorted(GOOD_TRACKS.items())):
        path = music / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tone(path, seconds, sr, channels=channels, seed=i + 1)
        corpus.expected[str(path)] = None
    (music / "cases").mkdir()
    for name, case in cases.items():
        shutil.copyfile(case.path, music / "cases" / name)
        corpus.expected[str(music / "cases" / name)] = case.error
        if case.truncated:
            corpus.truncated.add(str(music / "cases" / name))
    links = music / "links"
    links.mkdir()
    os.symlink("../a/track.wav", links / "dup.wav")
    os.symlink("../nowhere.wav", links / "dangling.wav")
    os.symlink("loop.wav", links / "loop.wav")
    os.symlink("..", links / "parent")  # a directory symlink: never followed
    corpus.duplicates.add(str(links / "dup.wav"))
    corpus.expected[str(links / "dangling.wav")] = MISSING_REASON_ERROR
    corpus.expected[str(links / "loop.wav")] = MISSING_REASON_ERROR
    outside = root / "outside"
    outside.mkdir()
    write_tone(outside / "extra.wav", 3.0, 16000, seed=9)
    corpus.expected[str(outside / "extra.wav")] = None
    gone = root / "gone.wav"  # listed with its size, deleted before any task runs
    (root / "list.csv").write_text(
        f"uri,size\noutside/extra.wav,\n{music / 'a' / 'track.wav'},\n{gone},123456\n",
        encoding="utf-8",
    )
    corpus.expected[str(gone)] = "FileNotFoundError"
    return corpus


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the session (2 CPUs, no dashboard); yields its GCS address."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def shard_corpus(
    tmp_path_factory: pytest.TempPathFactory, bad_audio_dir: AudioCases
) -> ShardCorpus:
    """The awkward corpus, written once per session."""
    return make_shard_corpus(tmp_path_factory.mktemp("shard_corpus"), bad_audio_dir)


@dataclass
class ShardRun:
    """One finished sharding run: its config, result and output folder."""

    cfg: object
    result: object
    output: Path


def shard_config(corpus: ShardCorpus, output: Path, **overrides):
    """The ``ShardJobConfig`` equivalent of ``RUN_ARGS`` for ``corpus``."""
    from musicoder.sharding import ShardJobConfig

    values = {
        "inputs": corpus.inputs,
        "output": str(output),
        "segment_seconds": SEGMENT_SECONDS,
        "shard_size_mb": SHARD_MB,
        "val_fraction": VAL_FRACTION,
        "keep_audio": True,
    }
    return ShardJobConfig(**(values | overrides))


@pytest.fixture(scope="session")
def shard_run(
    shard_corpus: ShardCorpus, ray_local: str, tmp_path_factory: pytest.TempPathFactory
) -> ShardRun:
    """``shard_corpus`` sharded once, in-process, on ``ray_local``."""
    from musicoder.sharding import run

    output = tmp_path_factory.mktemp("shard_run") / "out"
    cfg = shard_config(shard_corpus, output)
    return ShardRun(cfg, run(cfg, progress=False), output)
