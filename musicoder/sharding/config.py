"""The sharding job's root config (``ShardJobConfig``), kept free of heavy imports.

``launch/shard.py`` parses its command line against this dataclass through
:mod:`musicoder.config`, so parsing (and ``--help``) must not import torch or Ray. Keys that only
change how the job runs (parallelism, retries) are listed in :data:`EXECUTION_KEYS`: they are
left out of the plan fingerprint and the manifest config, so changing them never invalidates an
output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Keys that change how the job runs, not the shards it writes (raising max_reject_fraction after
# a failed run finishes the same plan without redoing any shard).
EXECUTION_KEYS = ("max_in_flight", "max_retries", "num_cpus", "overwrite", "max_reject_fraction")


@dataclass
class ShardJobConfig:
    """Everything that defines a sharding job (DESIGN §5).

    Attributes:
        inputs: folders, ``s3://`` prefixes, single audio files, or ``.txt``/``.csv`` lists of URIs.
        output: local folder or ``s3://`` prefix that receives plan, shards and manifest.
        preset: feature preset (``musicoder.features``).
        segment_seconds: length of one training sample; the last, shorter one is kept when it is at
            least ``min_seconds`` long.
        min_seconds: shorter tracks are rejected, shorter final remainders dropped.
        shard_size_mb: target tar size in MB (10^6 bytes); files are grouped at plan time by their
            estimated audio duration (see ``plan.json``'s ``grouping``).
        calibration_files: files per extension whose header duration is read at plan time to
            measure bytes per second of audio (a seeded sample); 0 = the built-in table only.
        keep_audio: also store each segment as ``<key>.flac`` (mono, 16-bit, at the preset's rate).
        seed: seeds the file order; same inputs + seed give byte-identical shards.
        val_fraction: share of source files held out (by a hash of their URI) into ``val-*`` shards.
        batch_segments: segments per feature-extraction batch inside a task.
        max_reject_fraction: more rejected inputs than this fraction fails the job (no manifest).
        max_in_flight: tasks submitted at once; None = 2 x the cluster's CPUs.
        max_retries: Ray retries of a failed or lost shard task.
        num_cpus: CPUs of the local Ray started when no cluster address is set; None = all.
        overwrite: replace an output that holds a different plan.
    """

    inputs: list[str] = field(default_factory=list)
    output: str = ""
    preset: Literal["musicoder324", "logmel128"] = "musicoder324"
    segment_seconds: float = 30.0
    min_seconds: float = 2.0
    shard_size_mb: float = 256.0
    calibration_files: int = 8
    keep_audio: bool = False
    seed: int = 0
    val_fraction: float = 0.02
    batch_segments: int = 8
    max_reject_fraction: float = 0.5
    max_in_flight: int | None = None
    max_retries: int = 3
    num_cpus: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.segment_seconds:
            raise ValueError(
                f"min_seconds={self.min_seconds} must be > 0 and <= "
                f"segment_seconds={self.segment_seconds}"
            )
        if self.shard_size_mb <= 0:
            raise ValueError(f"shard_size_mb={self.shard_size_mb} must be > 0")
        if self.calibration_files < 0:
            raise ValueError(f"calibration_files={self.calibration_files} must be >= 0 (0 = off)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"max_reject_fraction={self.max_reject_fraction} must be in [0, 1]")
        if self.batch_segments < 1:
            raise ValueError(f"batch_segments={self.batch_segments} must be >= 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight={self.max_in_flight} must be >= 1 (or null for auto)")
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries} must be >= 0")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus={self.num_cpus} must be >= 1 (or null for all)")
