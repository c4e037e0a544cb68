"""The manifest of a shard set (DESIGN §5): reading it (`read_manifest`, for the loader and
`downstream/embed.py`) and writing it (`ManifestBuilder`, for the sharding driver).

`read_manifest` reads a view (DESIGN §13, `format: musicoder-view`) as well: it reads the shard
sets the view references, checks that each still has the sha256 the view recorded and that all
share one feature preset, and returns one :class:`Manifest` whose shards carry the view's
excluded keys (their sample counts net of them), so the loader plans equal batches per rank
over exactly the samples the view keeps. `mix_manifests` is the one place where several
manifests (shard sets or views) become one: a view's sources, and a training mixture's
(`data.sources`). A weight is per sample: each sample of a source of weight w is drawn w times
per epoch on average (1 everywhere = the union, read once), so weights compose by multiplying
(a view's weight times its own sources' weights) and normalization statistics pool frames x
weight over the shard sets at the leaves, in float64.

:class:`ManifestBuilder` merges shard summaries strictly in plan order, whatever order they
arrive in, so the float64 sums and therefore ``manifest.json`` are identical between a clean run
and an interrupted-and-resumed one. Only shards with at least one sample are listed, and the
normalization stats cover the train shards only (validation frames must not leak into them).
Readers get typed fields (:class:`Manifest`, :class:`NormStats`), never the raw JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

import musicoder
from musicoder import storage
from musicoder.shardset.format import (
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
    SHARD_FORMAT,
    SHARD_FORMAT_VERSION,
    SPLITS,
    VIEW_FORMAT,
    VIEW_FORMAT_VERSION,
    VIEW_NAME,
    ShardFormatError,
)
from musicoder.shardset.index import ShardSummary


@dataclass(frozen=True)
class ShardRef:
    """One shard listed in the manifest (or view): `samples` counts the samples it delivers,
    net of `excluded` (keys a view leaves out; readers skip them)."""

    uri: str
    samples: int
    sha256: str | None = None  # of the whole tar, as written; None in sets that do not list it
    bytes: int | None = None
    excluded: frozenset[str] = frozenset()
    weight: float = 1.0  # draws per sample and epoch (a view's or mixture's weights, multiplied)
    source: int = 0  # index into the owning Manifest's `sources` (0 in a plain shard set)


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
    format_version: int = SHARD_FORMAT_VERSION
    sha256: str = ""  # of the manifest (or view) file's bytes
    sources: list[Manifest] = field(default_factory=list)  # a view's shard sets, in view order
    weights: list[float] = field(default_factory=list)  # per-sample weight of each source


def manifest_path(uri: str) -> str:
    """The JSON file behind `uri`: itself if it ends in `.json`, else `manifest.json` in that
    folder or prefix, else `view.json` there (a view's output folder)."""
    base = uri.rstrip("/")
    if base.endswith(".json"):
        return base
    path = storage.join(base, MANIFEST_NAME)
    view = storage.join(base, VIEW_NAME)
    return view if not storage.exists(path) and storage.exists(view) else path


def read_manifest(uri: str) -> Manifest:
    """Read and validate a shard set's manifest, or a view over shard sets.

    Args:
        uri: `manifest.json`, `view.json`, or the folder / prefix that holds one of them.

    Returns:
        The parsed manifest with shard URIs resolved against its folder (for a view: the
        sources' shards in view order, with its exclusions).

    Raises:
        FileNotFoundError: no manifest (the shard set is missing or incomplete).
        ShardFormatError: wrong format or version, missing fields; for a view also a source
            whose manifest changed since the view was made, or sources of different presets.
    """
    path = manifest_path(uri)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; the shard set is missing or not complete")
    data = storage.read_bytes(path)
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ShardFormatError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ShardFormatError(f"{path}: not a manifest (a JSON {type(raw).__name__})")
    if raw.get("format") == VIEW_FORMAT:
        return _read_view(path, raw, hashlib.sha256(data).hexdigest())
    manifest = _parse_manifest(path, raw)
    manifest.sha256 = hashlib.sha256(data).hexdigest()
    return manifest


def _parse_manifest(path: str, raw: dict) -> Manifest:
    base = storage.parent(path)
    if raw.get("format") != SHARD_FORMAT or raw.get("format_version") not in (
        READABLE_FORMAT_VERSIONS
    ):
        raise ShardFormatError(
            f"{path}: not a {SHARD_FORMAT} manifest of version "
            f"{'/'.join(map(str, READABLE_FORMAT_VERSIONS))} "
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
        format_version=int(raw["format_version"]),
    )


def _read_view(path: str, raw: dict, sha256: str) -> Manifest:
    """Resolve a view: its sources' manifests with shard lists net of the excluded keys, mixed
    by `mix_manifests` (weights per sample, stats pooled in float64)."""
    if raw.get("format_version") != VIEW_FORMAT_VERSION:
        raise ShardFormatError(
            f"{path}: unsupported {VIEW_FORMAT} version {raw.get('format_version')!r}, "
            f"expected {VIEW_FORMAT_VERSION}"
        )
    entries = raw.get("sources")
    if not isinstance(entries, list) or not entries:
        raise ShardFormatError(f"{path}: a view needs a non-empty 'sources' list")
    sources, weights, total = [], [], 0
    for n, entry in enumerate(entries):
        try:
            uri = storage.resolve(storage.parent(path), str(entry["uri"]))
            expected, weight = str(entry["sha256"]), float(entry.get("weight", 1.0))
            excluded = {str(k): set(v) for k, v in dict(entry.get("excluded") or {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardFormatError(f"{path}: malformed source {n} ({exc!r})") from None
        source = read_manifest(uri)
        if source.sources:
            raise ShardFormatError(f"{path}: source {uri} is a view; views reference shard sets")
        if source.sha256 != expected:
            raise ShardFormatError(
                f"{path}: source {source.uri} changed since the view was made "
                f"(sha256 {source.sha256[:12]}, view expects {expected[:12]}); re-run curate"
            )
        total += sum(s.samples for split in SPLITS for s in getattr(source, split))
        kept = {}
        for split in SPLITS:
            kept[split] = []
            for ref in getattr(source, split):
                drop = frozenset(excluded.get(storage.basename(ref.uri), ()))
                if ref.samples > len(drop):
                    kept[split].append(
                        dataclasses.replace(ref, samples=ref.samples - len(drop), excluded=drop)
                    )
        sources.append(dataclasses.replace(source, **kept))
        weights.append(weight)
    view = mix_manifests(path, sources, weights)
    kept = sum(r.samples for split in SPLITS for r in getattr(view, split))
    view.counts = {"sources": len(sources), "segments": kept, "excluded": total - kept}
    view.sha256 = sha256
    return view


def mix_manifests(uri: str, sources: list[Manifest], weights: list[float]) -> Manifest:
    """One manifest over several (shard sets or views), each sample of `sources[k]` weighted
    `weights[k]` (draws per epoch; a view's own weights are multiplied in).

    Args:
        uri: what errors and logs call the result (a view's path, or the mixture's name).
        sources: the manifests, in order; their shards are listed in that order.
        weights: one per source, > 0.

    Returns:
        A manifest whose shards carry `weight` (source weight x their own) and `source` (k),
        whose `sources` and `weights` are the arguments, and whose stats pool the shard sets
        at the leaves by frames x weight in float64.

    Raises:
        ShardFormatError: a weight that is not > 0, or sources of different presets (the
            message names the offending source's URI).
    """
    first = sources[0]
    refs: dict[str, list[ShardRef]] = {split: [] for split in SPLITS}
    for k, (source, weight) in enumerate(zip(sources, weights, strict=True)):
        if not weight > 0:
            raise ShardFormatError(f"{uri}: source {source.uri} has weight {weight}, need > 0")
        if (source.preset, source.channels) != (first.preset, first.channels):
            raise ShardFormatError(
                f"{uri}: source {source.uri} uses preset {source.preset!r} "
                f"({source.channels} channels), {first.uri} uses {first.preset!r} "
                f"({first.channels} channels); all sources must share one feature preset"
            )
        for split in SPLITS:
            refs[split] += [
                dataclasses.replace(ref, weight=ref.weight * weight, source=k)
                for ref in getattr(source, split)
            ]
    leaves = [leaf for m, w in zip(sources, weights, strict=True) for leaf in _leaves(m, w)]
    return Manifest(
        uri=uri,
        preset=first.preset,
        feature=first.feature,
        channels=first.channels,
        train=refs["train"],
        val=refs["val"],
        stats=merge_stats([m.stats for m, _ in leaves], [w for _, w in leaves]),
        counts={
            "sources": len(sources),
            "segments": sum(r.samples for rs in refs.values() for r in rs),
        },
        format_version=VIEW_FORMAT_VERSION,
        sources=list(sources),
        weights=list(weights),
    )


def _leaves(manifest: Manifest, weight: float) -> list[tuple[Manifest, float]]:
    """The shard sets under `manifest` with their composed per-sample weights."""
    if not manifest.sources:
        return [(manifest, weight)]
    return [
        leaf
        for source, own in zip(manifest.sources, manifest.weights, strict=True)
        for leaf in _leaves(source, weight * own)
    ]


def merge_stats(stats: list[NormStats], weights: list[float]) -> NormStats:
    """Pool per-channel mean and std in float64, each source weighted by frames x weight: the
    mixture's mean, and its variance as the weighted mean of the second moments minus the
    squared mean (never an average of stds). With equal weights: the exact statistics of the
    union; with integer weights: those of the union with each source repeated weight times."""
    w = np.array([s.count * wt for s, wt in zip(stats, weights, strict=True)], dtype=np.float64)
    if not w.sum():
        w = np.ones(len(stats))
    w = w / w.sum()
    mean = sum(wi * s.mean for wi, s in zip(w, stats, strict=True))
    second = sum(wi * (s.std**2 + s.mean**2) for wi, s in zip(w, stats, strict=True))
    std = np.sqrt(np.maximum(second - mean * mean, 0.0))
    return NormStats(mean=mean, std=std, count=sum(s.count for s in stats))


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
