"""Shard index and manifest formats (DESIGN §5), and the merge of shard results into a manifest.

Each shard task returns a :class:`ShardSummary` and writes the same facts (plus its sample keys)
as the shard's index JSON; a resumed job reads the summaries of finished shards back from their
indexes. :class:`ManifestBuilder` merges summaries strictly in plan order, whatever order they
arrive in, so the float64 sums and therefore ``manifest.json`` are identical between a clean run
and an interrupted-and-resumed one. Only shards with at least one sample are listed, and the
normalization stats cover the train shards only (validation frames must not leak into them).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field

import numpy as np

import musicoder

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
MANIFEST_FORMAT = "musicoder-shards"
MANIFEST_FORMAT_VERSION = 1
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".json"
SPLITS = ("train", "val")


@dataclass(kw_only=True)
class ShardSummary:
    """What one finished shard holds; mirrors its index JSON without the per-sample lists."""

    name: str  # tar name, e.g. "shard-000000.tar"
    split: str
    samples: int
    frames: int
    seconds: float
    bytes: int
    sha256: str
    sum: list[float]  # float64 per-channel sum over all frames of the shard
    sumsq: list[float]
    count: int  # frames summed
    accepted: int
    rejected: int
    truncated: int
    rejects: list[dict] = field(default_factory=list)  # {"uri", "reason", "error"}
    task_seconds: float = 0.0  # wall time of the task; not part of the index (not deterministic)

    def to_index(self, keys: list[str], sample_frames: list[int]) -> dict:
        """The shard's index JSON (INTERFACES.md, "Shard format v1")."""
        return {
            "name": self.name,
            "split": self.split,
            "samples": self.samples,
            "frames": self.frames,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "keys": keys,
            "sample_frames": sample_frames,
            "sum": self.sum,
            "sumsq": self.sumsq,
            "count": self.count,
            "files": {
                "accepted": self.accepted,
                "rejected": self.rejected,
                "truncated": self.truncated,
            },
            "rejects": self.rejects,
        }

    @classmethod
    def from_index(cls, index: dict) -> ShardSummary:
        """Rebuild a summary from a shard index read back from storage.

        Raises:
            ValueError: a required field is missing.
        """
        try:
            files = index["files"]
            return cls(
                name=index["name"],
                split=index["split"],
                samples=index["samples"],
                frames=index["frames"],
                seconds=index["seconds"],
                bytes=index["bytes"],
                sha256=index["sha256"],
                sum=index["sum"],
                sumsq=index["sumsq"],
                count=index["count"],
                accepted=files["accepted"],
                rejected=files["rejected"],
                truncated=files["truncated"],
                rejects=index["rejects"],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"shard index {index.get('name', '?')}: missing field {e}") from None


class ManifestBuilder:
    """Merges shard summaries in plan order into counts, shard lists and normalization stats."""

    def __init__(self, num_shards: int, channels: int) -> None:
        self.num_shards = num_shards
        self._pending: dict[int, ShardSummary] = {}
        self._next = 0
        self._sum = np.zeros(channels, dtype=np.float64)
        self._sumsq = np.zeros(channels, dtype=np.float64)
        self.count = 0
        self.seconds = 0.0
        self.totals = {
            "accepted": 0,
            "rejected": 0,
            "truncated": 0,
            "segments": 0,
            "frames": 0,
            "bytes": 0,
        }
        self.shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
        self.rejects: list[dict] = []

    def add(self, index: int, summary: ShardSummary) -> None:
        """Record the summary of shard ``index`` (position in the plan); merges what is in order."""
        self._pending[index] = summary
        while self._next in self._pending:
            self._merge(self._pending.pop(self._next))
            self._next += 1

    @property
    def complete(self) -> bool:
        """True once every planned shard has been merged."""
        return self._next == self.num_shards

    def _merge(self, s: ShardSummary) -> None:
        if s.split == "train":  # normalization from training data only
            self._sum += np.asarray(s.sum, dtype=np.float64)
            self._sumsq += np.asarray(s.sumsq, dtype=np.float64)
            self.count += s.count
        self.seconds += s.seconds
        for key, value in (
            ("accepted", s.accepted),
            ("rejected", s.rejected),
            ("truncated", s.truncated),
            ("segments", s.samples),
            ("frames", s.frames),
            ("bytes", s.bytes),
        ):
            self.totals[key] += value
        self.rejects.extend(s.rejects)
        if s.samples:
            self.shards[s.split].append(
                {
                    "name": s.name,
                    "samples": s.samples,
                    "frames": s.frames,
                    "bytes": s.bytes,
                    "sha256": s.sha256,
                }
            )

    def stats(self) -> dict:
        """Per-channel mean and std (float64) over every frame of the train shards."""
        if not self.count:
            zeros = [0.0] * len(self._sum)
            return {"count": 0, "mean": zeros, "std": zeros}
        mean = self._sum / self.count
        var = np.maximum(self._sumsq / self.count - mean * mean, 0.0)
        return {"count": self.count, "mean": mean.tolist(), "std": np.sqrt(var).tolist()}

    def counts(self, plan_rejects: int) -> dict:
        """Counts that add up: inputs = accepted + rejected (plan-time rejects included)."""
        rejected = self.totals["rejected"] + plan_rejects
        return {
            "inputs": self.totals["accepted"] + rejected,
            "accepted": self.totals["accepted"],
            "rejected": rejected,
            "truncated": self.totals["truncated"],
            "segments": self.totals["segments"],
            "frames": self.totals["frames"],
            "hours": self.seconds / 3600.0,
        }

    def manifest(
        self,
        *,
        plan_rejects: int,
        preset: str,
        feature: dict,
        channels: int,
        fingerprint: str,
        config: dict,
    ) -> dict:
        """The content of ``manifest.json``; ``created`` is its only time field."""
        assert self.complete, "manifest requested before every shard was merged"
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "preset": preset,
            "feature": feature,
            "channels": channels,
            "counts": self.counts(plan_rejects),
            "train": self.shards["train"],
            "val": self.shards["val"],
            "stats": self.stats(),
            "plan_fingerprint": fingerprint,
            "config": config,
            "code_version": musicoder.__version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }


def rejects_jsonl(rejects: list[dict]) -> str:
    """``rejects.jsonl`` text: one JSON object per line, keys sorted."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rejects)


def reject_fraction(counts: dict) -> float:
    """Rejected share of the inputs (0 when there are none)."""
    return counts["rejected"] / counts["inputs"] if counts["inputs"] else 0.0


def hours(seconds: float) -> str:
    """Human duration: '1.25 h' or '12.5 min'."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
