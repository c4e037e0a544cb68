"""Shard planning: inputs -> a deterministic grouping of source files into shards (DESIGN §5).

The plan is a pure function of (listed files, config, seed, code version); its fingerprint goes
into ``plan.json``, which the driver writes before any shard, so a re-run can tell whether an
output belongs to the same plan. Steps:

1. List every input (a folder, an ``s3://`` prefix, one audio file, or a ``.txt``/``.csv`` list
   of URIs; :mod:`musicoder.sharding.inputs`); entries that cannot be stat'ed (missing, dangling
   or looping symlinks) become plan-time rejects.
2. Drop duplicates by real path (``storage.real_key``), keeping the smallest URI.
3. Order files by a seeded 64-bit hash of the URI: a shuffle that does not depend on listing order.
4. Hold out whole files for validation by an unseeded hash of the URI (stable across seeds).
5. Measure bytes per second of audio per extension on a small seeded sample of the files
   (:mod:`musicoder.sharding.calibrate`; a table when disabled or nothing could be read).
6. Group each split greedily by estimated audio seconds (file bytes / that rate) towards the
   target shard size; the rule, the rates and the sample are recorded in ``plan.json``.

Memory: the driver must plan millions of files, so files live in compact arrays
(:class:`FileTable`: one UTF-8 blob + offsets + sizes, plus two 8-byte hashes and a flag), about
``len(uri) + 41`` bytes per file at rest (peak while planning: ~120 bytes for 55-character URIs),
instead of one Python object per file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from array import array
from dataclasses import dataclass

import numpy as np

import musicoder
from musicoder import config as config_lib
from musicoder import features, storage
from musicoder.audio import AUDIO_EXTENSIONS
from musicoder.sharding.calibrate import (
    DEFAULT_INPUT_BYTES_PER_SECOND,
    INPUT_BYTES_PER_SECOND,
    calibrate_rates,
)
from musicoder.sharding.config import EXECUTION_KEYS, ShardJobConfig
from musicoder.sharding.inputs import iter_input, normalize_uri, suffix
from musicoder.shardset.format import TRAIN, VAL, shard_name

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
PLAN_FORMAT = "musicoder-shard-plan"
PLAN_FORMAT_VERSION = 1
MB = 1_000_000
SAMPLE_OVERHEAD_BYTES = 2_500  # tar headers + padding + npy header + sample JSON
FLAC_BYTES_PER_SAMPLE = 1.2  # 16-bit mono FLAC of music compresses to roughly 60%
MISSING_REASON = "cannot stat: missing, or a dangling or looping symlink"
_HASH_BYTES = 8


class FileTable:
    """Append-only (uri, size) list: one UTF-8 blob plus offsets, ~len(uri) + 16 bytes per file."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("q")
        self._sizes = array("q")

    def append(self, uri: str, size: int) -> int:
        """Add one file and return its id."""
        self._blob += uri.encode("utf-8")
        self._ends.append(len(self._blob))
        self._sizes.append(size)
        return len(self._ends) - 1

    def __len__(self) -> int:
        return len(self._ends)

    def uri(self, i: int) -> str:
        """The URI of file ``i``."""
        start = self._ends[i - 1] if i else 0
        return self._blob[start : self._ends[i]].decode("utf-8")

    def size(self, i: int) -> int:
        """The size in bytes of file ``i``."""
        return self._sizes[i]

    def nbytes(self) -> int:
        """Bytes held by the table (for memory checks)."""
        return len(self._blob) + self._ends.itemsize * len(self._ends) * 2


@dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan: files ``order[start:stop]`` of :class:`ShardPlan`."""

    index: int  # position in ShardPlan.shards
    name: str  # "shard-000000" or "val-000000" (no extension)
    split: str  # TRAIN or VAL
    start: int
    stop: int


@dataclass
class ShardPlan:
    """The result of planning: files, their grouping, plan-time rejects and the fingerprint."""

    files: FileTable
    order: np.ndarray  # int64 file ids, train shards' files then val shards' files
    shards: list[PlannedShard]
    rejects: list[dict]  # plan-time rejects: {"uri", "reason", "error"}
    duplicates: int
    est_seconds: float
    grouping: dict
    inputs: list[str]
    config: dict
    fingerprint: str = ""

    @property
    def num_inputs(self) -> int:
        """Unique inputs (after duplicates were dropped), plan-time rejects included."""
        return len(self.order) + len(self.rejects)

    def uris(self, shard: PlannedShard) -> list[str]:
        """The source URIs of one shard, in processing order."""
        return [self.files.uri(int(i)) for i in self.order[shard.start : shard.stop]]

    def to_json(self) -> dict:
        """The content of ``plan.json``."""
        splits = [s.split for s in self.shards]
        return {
            "format": PLAN_FORMAT,
            "format_version": PLAN_FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "code_version": musicoder.__version__,
            "seed": self.config["seed"],
            "inputs": self.inputs,
            "config": self.config,
            "grouping": self.grouping,
            "counts": {
                "inputs": self.num_inputs,
                "files": len(self.order),
                "plan_rejects": len(self.rejects),
                "duplicates": self.duplicates,
                "train_shards": splits.count(TRAIN),
                "val_shards": splits.count(VAL),
                "estimated_hours": self.est_seconds / 3600.0,
            },
        }


def output_bytes_per_second(cfg: ShardJobConfig) -> float:
    """Estimated shard bytes per second of source audio for this config."""
    feat = features.preset_config(cfg.preset)
    per_second = features.num_frames(feat.sample_rate * 3600, cfg.preset) / 3600.0
    rate = per_second * features.num_channels(cfg.preset) * 2  # float16
    if cfg.keep_audio:
        rate += feat.sample_rate * FLAC_BYTES_PER_SAMPLE
    return rate + SAMPLE_OVERHEAD_BYTES / cfg.segment_seconds


def estimate_seconds(uri: str, size: int, rates: dict[str, float] | None = None) -> float:
    """Audio seconds guessed from a file's size and extension (a plan-time size proxy).

    Args:
        uri: the file (only its extension is used).
        size: its size in bytes.
        rates: bytes per second by extension (the plan's ``grouping.input_bytes_per_second``);
            None = the fallback table.
    """
    rate = (rates or INPUT_BYTES_PER_SECOND).get(suffix(uri), DEFAULT_INPUT_BYTES_PER_SECOND)
    return max(size, 0) / rate


def build_plan(cfg: ShardJobConfig, *, reuse: dict | None = None) -> ShardPlan:
    """List the inputs and group them into shards.

    Args:
        cfg: the job config (``inputs`` must be non-empty).
        reuse: the ``grouping`` of an earlier ``plan.json`` of this output: its measured rates
            are used instead of calibrating again, so that a resume does not depend on the
            sampled files still reading the same (a file replaced or an object unreachable
            since would otherwise change the shards). Ignored when it holds no rates.

    Returns:
        The plan, fingerprinted.

    Raises:
        ValueError: no inputs given, or no audio file found in any of them.
        FileNotFoundError: an input does not exist.
    """
    if not cfg.inputs:
        raise ValueError("inputs: give at least one --input (folder, s3:// prefix or list file)")
    files, real, rank, val = FileTable(), array("q"), array("q"), bytearray()
    rejects: dict[str, dict] = {}
    seed = cfg.seed.to_bytes(8, "little", signed=True)
    for spec in cfg.inputs:
        found = 0
        for uri, size in iter_input(spec):
            found += 1
            if size < 0:
                rejects.setdefault(
                    uri, {"uri": uri, "reason": MISSING_REASON, "error": "FileNotFoundError"}
                )
                continue
            files.append(uri, size)
            real.append(_hash64(storage.real_key(uri).encode("utf-8")))
            rank.append(_hash64(seed + uri.encode("utf-8")))
            val.append(
                _hash64(b"val\0" + uri.encode("utf-8"), signed=False) / 2.0**64 < cfg.val_fraction
            )
        if not found:
            log.warning("input %s: no audio files found", spec)
    if not len(files) and not rejects:
        raise ValueError(
            f"inputs: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in {cfg.inputs}"
        )
    keep = _unique_by_real_path(files, np.frombuffer(real, dtype=np.int64))
    ids = np.flatnonzero(keep)
    ids = ids[np.argsort(np.frombuffer(rank, dtype=np.int64)[ids], kind="stable")]
    is_val = np.frombuffer(bytes(val), dtype=np.bool_)[ids] if len(ids) else np.zeros(0, bool)
    target = cfg.shard_size_mb * MB / output_bytes_per_second(cfg)
    order = np.concatenate([ids[~is_val], ids[is_val]]).astype(np.int64)
    rates = _reusable_rates(reuse)
    if rates is not None:
        calibration = reuse.get("calibration") or {}
    else:
        rates, calibration = calibrate_rates(
            ((files.uri(int(i)), files.size(int(i))) for i in ids), cfg.calibration_files
        )
    shards: list[PlannedShard] = []
    n_train = int((~is_val).sum())
    est = _group(files, order, 0, n_train, TRAIN, target, rates, shards)
    est += _group(files, order, n_train, len(order), VAL, target, rates, shards)
    plan = ShardPlan(
        files=files,
        order=order,
        shards=shards,
        rejects=sorted(rejects.values(), key=lambda r: r["uri"]),
        duplicates=len(files) - len(ids),
        est_seconds=est,
        grouping=_grouping_rule(cfg, target, rates, calibration),
        inputs=[normalize_uri(s) for s in cfg.inputs],
        config=job_config_dict(cfg),
    )
    plan.fingerprint = _fingerprint(plan)
    log.info(
        "planned %d files (%d duplicates dropped, %d plan-time rejects) into %d shards, "
        "~%.2f h audio",
        len(order),
        plan.duplicates,
        len(plan.rejects),
        len(shards),
        est / 3600,
    )
    return plan


def job_config_dict(cfg: ShardJobConfig) -> dict:
    """The config keys that define the dataset, inputs normalized.

    Execution-only keys and ``output`` itself are left out: where a dataset lives (or is copied
    to) does not change it.
    """
    out = {
        k: v
        for k, v in config_lib.to_dict(cfg).items()
        if k not in EXECUTION_KEYS and k != "output"
    }
    out["inputs"] = [normalize_uri(s) for s in cfg.inputs]
    return out


def _group(
    files: FileTable,
    order: np.ndarray,
    start: int,
    stop: int,
    split: str,
    target: float,
    rates: dict[str, float],
    shards: list[PlannedShard],
) -> float:
    """Greedy grouping of ``order[start:stop]`` into shards of ~``target`` estimated seconds."""
    total = acc = 0.0
    first = start
    count = 0
    for j in range(start, stop):
        est = estimate_seconds(files.uri(int(order[j])), files.size(int(order[j])), rates)
        if j > first and acc + est > target:
            shards.append(_shard(len(shards), split, count, first, j))
            count, first, acc = count + 1, j, 0.0
        acc += est
        total += est
    if stop > first:
        shards.append(_shard(len(shards), split, count, first, stop))
    return total


def _shard(index: int, split: str, number: int, start: int, stop: int) -> PlannedShard:
    return PlannedShard(index, shard_name(split, number), split, start, stop)


def _unique_by_real_path(files: FileTable, real: np.ndarray) -> np.ndarray:
    """Mask keeping one file per real path (the smallest URI); hash ties are checked exactly."""
    keep = np.ones(len(files), dtype=bool)
    by_hash = np.argsort(real, kind="stable")
    same = np.flatnonzero(real[by_hash][1:] == real[by_hash][:-1])
    groups: dict[int, set[int]] = {}
    for pos in same:  # only duplicates (or rare 64-bit collisions) get here
        groups.setdefault(int(real[by_hash[pos]]), set()).update(by_hash[pos : pos + 2].tolist())
    for members in groups.values():
        by_key: dict[str, list[int]] = {}
        for i in sorted(members):
            by_key.setdefault(storage.real_key(files.uri(i)), []).append(i)
        for ids in by_key.values():
            best = min(ids, key=files.uri)
            keep[[i for i in ids if i != best]] = False
    return keep


def _reusable_rates(reuse: dict | None) -> dict[str, float] | None:
    """The rates of an earlier plan's ``grouping``, or None if absent or not all positive numbers
    (a hand-edited ``plan.json``): then the plan calibrates afresh."""
    rates = (reuse or {}).get("input_bytes_per_second")
    if not isinstance(rates, dict) or not rates:
        return None
    try:
        out = {str(k): float(v) for k, v in rates.items()}
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) and v > 0 for v in out.values()) else None


def _grouping_rule(
    cfg: ShardJobConfig, target_seconds: float, rates: dict[str, float], calibration: dict
) -> dict:
    return {
        "rule": "files in order, greedily grouped while estimated audio seconds <= target_seconds "
        "(a file larger than the target gets its own shard); train and val grouped separately",
        "estimate": "file bytes / input_bytes_per_second[extension]",
        "input_bytes_per_second": rates,
        "default_input_bytes_per_second": DEFAULT_INPUT_BYTES_PER_SECOND,
        "calibration": calibration,
        "output_bytes_per_second": output_bytes_per_second(cfg),
        "target_bytes": cfg.shard_size_mb * MB,
        "target_seconds": target_seconds,
        "order": "ascending signed blake2b-64(seed as int64 LE || uri)",
        "val": "unsigned LE blake2b-64('val\\0' || uri) / 2^64 < val_fraction (whole source files)",
        "duplicates": "same storage.real_key: the smallest URI is kept",
    }


def _fingerprint(plan: ShardPlan) -> str:
    """sha256 over code version, output-defining config, feature parameters, shards and files."""
    digest = hashlib.sha256()
    feat = dataclasses.asdict(features.preset_config(plan.config["preset"]))
    head = {
        "code_version": musicoder.__version__,
        "format": PLAN_FORMAT_VERSION,
        "config": plan.config,
        "feature": feat,
        "rejects": plan.rejects,
    }
    digest.update(json.dumps(head, sort_keys=True).encode("utf-8"))
    for shard in plan.shards:
        digest.update(f"\n#{shard.name}\n".encode())
        for i in plan.order[shard.start : shard.stop]:
            digest.update(f"{plan.files.uri(int(i))}\0{plan.files.size(int(i))}\n".encode())
    return digest.hexdigest()


def _hash64(data: bytes, *, signed: bool = True) -> int:
    """blake2b with an 8-byte digest as a little-endian integer (signed: fits an int64 array)."""
    return int.from_bytes(
        hashlib.blake2b(data, digest_size=_HASH_BYTES).digest(), "little", signed=signed
    )
