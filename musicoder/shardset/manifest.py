"""The manifest of a shard set (DESIGN §5): reading it (`read_manifest`, for the loader and
`downstream/embed.py`) and writing it (`ManifestBuilder`, for the sharding driver).

:class:`ManifestBuilder` merges shard summaries strictly in plan order, whatever order they
arrive in, so the float64 sums and therefore ``manifest.json`` are identical between a clean run
and an interrupted-and-resumed one. Only shards with at least one sample are listed, and the
normalization stats cover the train shards only (validation frames must not leak into them).
Readers get typed fields (:class:`Manifest`, :class:`NormStats`), never the raw JSON.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

import numpy as np

import musicoder
from musicoder import storage
from musicoder.shardset.format import (
    MANIFEST_NAME,
    SHARD_FORMAT,
    SHARD_FORMAT_VERSION,
    SPLITS,
    ShardFormatError,
)
from musicoder.shardset.index import ShardSummary


@dataclass(frozen=True)
class ShardRef:
    """One shard listed in the manifest."""

    uri: str
    samples: int
    sha256: str | None = None  # of the whole tar, as written; None in sets that do not list it
    bytes: int | None = None


@dataclass(frozen=True)
class NormStats:
    """Per-channel normalization statistics of the train shards, float64 as stored."""

    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,) float64; may hold zeros (constant channels): floor before dividing
    count: int  # frames they were computed over

    def to_dict(self) -> dict:
        """`{"mean": [...], "std": [...]}`: what checkpoints and exports record."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


@dataclass
class Manifest:
    """A shard set's `manifest.json` as readers need it."""

    uri: str
    preset: str
    feature: dict  # the preset's parameters
    channels: int
    train: list[ShardRef]
    val: list[ShardRef]
    stats: NormStats
    counts: dict  # inputs, accepted, rejected, truncated, segments, frames, hours


def read_manifest(uri: str) -> Manifest:
    """Read and validate a shard set's manifest.

    Args:
        uri: `manifest.json` or the folder / prefix that holds it.

    Returns:
        The parsed manifest with shard URIs resolved against its folder.

    Raises:
        FileNotFoundError: no manifest (the shard set is missing or incomplete).
        ShardFormatError: wrong format or version, or missing fields.
    """
    base = uri.rstrip("/")
    if base.endswith(".json"):
        path, base = base, storage.parent(base)
    else:
        path = storage.join(base, MANIFEST_NAME)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; the shard set is missing or not complete")
    raw = storage.read_json(path)
    if raw.get("format") != SHARD_FORMAT or raw.get("format_version") != SHARD_FORMAT_VERSION:
        raise ShardFormatError(
            f"{path}: not a {SHARD_FORMAT} v{SHARD_FORMAT_VERSION} manifest "
            f"(format={raw.get('format')!r}, version={raw.get('format_version')!r})"
        )
    try:
        channels = int(raw["channels"])
        stats = NormStats(
            mean=np.asarray(raw["stats"]["mean"], dtype=np.float64),
            std=np.asarray(raw["stats"]["std"], dtype=np.float64),
            count=int(raw["stats"].get("count", 0)),
        )
        refs = {
            split: [
                ShardRef(
                    storage.join(base, s["name"]),
                    int(s["samples"]),
                    sha256=s.get("sha256"),
                    bytes=int(s["bytes"]) if "bytes" in s else None,
                )
                for s in raw.get(split, [])
            ]
            for split in SPLITS
        }
        preset = str(raw["preset"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ShardFormatError(f"{path}: malformed manifest ({exc!r})") from exc
    if stats.mean.shape != (channels,) or stats.std.shape != (channels,):
        raise ShardFormatError(f"{path}: stats must have {channels} channels")
    return Manifest(
        uri=path,
        preset=preset,
        feature=dict(raw.get("feature") or {}),
        channels=channels,
        train=refs["train"],
        val=refs["val"],
        stats=stats,
        counts=dict(raw.get("counts") or {}),
    )


def check_preset(manifest: Manifest, preset: str, input_dim: int) -> None:
    """Refuse shards made with another feature preset than the model expects.

    Raises:
        ValueError: naming the manifest, both presets and channel counts.
    """
    if manifest.preset != preset or manifest.channels != input_dim:
        raise ValueError(
            f"{manifest.uri}: shards use preset {manifest.preset!r} ({manifest.channels} channels) "
            f"but the run expects preset {preset!r} with model input_dim {input_dim}"
        )


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
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
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
