"""`DemoConfig`: the knobs of `make demo` and where each stage writes under ``out``.

The defaults are sized to finish in well under 10 minutes on 2 CPU cores (measured; see the
README) while giving pre-training enough steps for its loss to fall clearly. Paths to the repo's
configs are resolved against the repository root, so the demo runs from any working directory.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Literal

from musicoder import storage
from musicoder.demo_corpus import SAMPLE_RATES

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository: launch/, configs/
CONFIG_NAME = "demo_config.yaml"


@dataclass
class DemoConfig:
    """Parameters of the demo run (`launch/demo.py` flags and `--set` keys)."""

    out: str = "shards/demo"  # local folder for everything the demo writes (DeepSpeed needs files)
    tracks: int = 240  # demo corpus size, spread evenly over the 6 genres
    seconds: float = 30.0  # length of every track
    seed: int = 0
    sample_rate: int = 22050  # rate of the corpus files (features resample as their preset needs)
    workers: int = 0  # processes rendering the corpus; 0 = one per CPU core, at most 4
    feature_tracks: int = 12  # tracks decoded and featurized by the `features` stage
    preset: Literal["musicoder324", "logmel128"] = "musicoder324"
    segment_seconds: float = 30.0  # shard sample length (launch/shard.py --segment-seconds)
    shard_mb: float = 16.0  # target shard size, so that Ray runs several tasks
    val_fraction: float = 0.1  # tracks held out for validation loss (enough for one batch)
    steps: int = 200  # pre-training optimizer steps (train.max_steps); the loss levels off by ~150
    crop_frames: int = 256  # pre-training crop length (data.max_frames; ~12 s)
    batch: int = 16  # pre-training clips per step (train.micro_batch); <= training samples
    pretrain_config: str = "configs/pretrain/demo.yaml"  # relative paths: to the repo root
    deepspeed_config: str = "configs/deepspeed/zero2.json"
    genre_task: str = "configs/tasks/demo_genre.yaml"
    tags_task: str = "configs/tasks/demo_tags.yaml"

    def __post_init__(self) -> None:
        for key in ("tracks", "feature_tracks", "steps", "crop_frames", "batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("seconds", "segment_seconds"):
            if getattr(self, key) < 2.0:
                raise ValueError(
                    f"{key}: must be >= 2 (shorter audio is rejected), got {getattr(self, key)}"
                )
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate: must be one of {SAMPLE_RATES}, got {self.sample_rate}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0 (0 = auto), got {self.workers}")
        if self.shard_mb <= 0 or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("shard_mb: must be > 0; val_fraction: must be in [0, 1)")
        if not storage.is_local(self.out):
            raise ValueError(
                f"out: {self.out} must be a local folder (pre-training writes checkpoints as files)"
            )

    def path(self, *parts: str) -> str:
        """An absolute local path below ``out``."""
        return os.path.join(os.path.abspath(storage.local_path(self.out)), *parts)

    @property
    def corpus_dir(self) -> str:
        return self.path("corpus")

    @staticmethod
    def repo_file(name: str) -> str:
        """A config or script path: as given when it exists, else relative to the repo root."""
        return name if os.path.exists(name) else str(ROOT / name)
