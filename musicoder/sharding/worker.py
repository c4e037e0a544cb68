"""Shard worker: one task = decode its files, extract features, write one deterministic tar.

A plain function (:class:`ShardTask` in, :class:`ShardSummary` out), so it runs and is tested
without Ray; only the driver wraps it in ``ray.remote`` (STYLE 11). For each source file:

    iter_segments -> batches of equal-length segments -> extract_features -> float16 .npy
                                                      -> sample_facts (hash, fingerprint, quality)

Members of one file are spooled (in memory up to ``SPOOL_MEMORY_BYTES``, then on local disk) and
copied into the tar only once the file decoded cleanly: ``iter_segments`` may reject a file after
having yielded segments (too short or silent overall), and such a file must leave no samples.
Publication order (STYLE 9): the tar is written to a local temp file and uploaded atomically,
then the shard's index JSON, whose presence marks the shard as done.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile
import torch

from musicoder import features, storage
from musicoder.audio import AudioError, Segment, iter_segments
from musicoder.sharding.facts import sample_facts
from musicoder.shardset.format import (
    AUDIO_SUFFIX,
    FEATURE_SUFFIX,
    INDEX_SUFFIX,
    META_SUFFIX,
    TAR_SUFFIX,
    member_name,
    sample_key,
    source_sha1,
)
from musicoder.shardset.index import INDEX_FACT_FIELDS, ShardSummary
from musicoder.shardset.writer import ShardTarWriter

log = logging.getLogger(__name__)

SPOOL_MEMORY_BYTES = 32 * 2**20
FLAC_SUBTYPE = "PCM_16"
# Not a property of the file: re-raised so that Ray retries the whole task (an unreachable
# or throttling S3 endpoint is `storage.StorageUnavailableError`, a ConnectionError).
FATAL_ERRORS = (ConnectionError, TimeoutError, MemoryError)


@dataclass(frozen=True, kw_only=True)
class ShardTask:
    """Everything one shard task needs; small and picklable (sent to a Ray worker)."""

    index: int  # position in the plan
    name: str  # "shard-000000" (no extension)
    split: str
    output: str  # the job's output folder or s3:// prefix
    uris: tuple[str, ...]
    preset: str
    segment_seconds: float
    min_seconds: float
    keep_audio: bool = False
    batch_segments: int = 8


@dataclass
class _FileResult:
    """Samples of one source file, spooled until the file is known to be good."""

    spool: tempfile.SpooledTemporaryFile
    sum: np.ndarray  # float64 per-channel sums of the stored (float16) values
    sumsq: np.ndarray
    samples: list[dict] = field(default_factory=list)  # per sample: meta + payload (offset, size)

    def put(self, data: bytes) -> tuple[int, int]:
        """Spool a payload; returns its (offset, size)."""
        offset = self.spool.tell()
        self.spool.write(data)
        return offset, len(data)

    def put_npy(self, array: np.ndarray) -> tuple[int, int]:
        """Spool an array in ``.npy`` format (no pickle); returns its (offset, size)."""
        offset = self.spool.tell()
        np.lib.format.write_array(self.spool, np.ascontiguousarray(array), allow_pickle=False)
        return offset, self.spool.tell() - offset


def process_shard(task: ShardTask) -> ShardSummary:
    """Build one shard: tar (atomic upload), then its index JSON.

    Args:
        task: the shard's files and parameters.

    Returns:
        The shard's summary (the index without its per-sample lists).

    Raises:
        OSError: the output cannot be written (the task should be retried).
    """
    started = time.perf_counter()
    retries = sum(storage.retry_counts().values())  # this worker process's, so far
    channels = features.num_channels(task.preset)
    total, total_sq = np.zeros(channels, np.float64), np.zeros(channels, np.float64)
    keys: list[str] = []
    sample_frames: list[int] = []
    facts: list[dict] = []  # per sample, for the index: what curation reads without the tars
    rejects: list[dict] = []
    counts = {"accepted": 0, "truncated": 0, "seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix="musicoder-shard-") as tmp:
        tar_path = os.path.join(tmp, task.name + TAR_SUFFIX)
        with ShardTarWriter(tar_path) as writer:
            for uri in task.uris:
                with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=tmp) as spool:
                    try:
                        zeros = np.zeros(channels, np.float64)
                        result, truncated = _encode_file(
                            uri, task, _FileResult(spool, zeros, zeros.copy())
                        )
                    except FATAL_ERRORS:
                        raise
                    # A bad file is a reject, never the end of the job.
                    except Exception as err:  # noqa: BLE001
                        reason = err.reason if isinstance(err, AudioError) else _one_line(err)
                        log.info("rejected %s: %s (%s)", uri, reason, type(err).__name__)
                        rejects.append({"uri": uri, "reason": reason, "error": type(err).__name__})
                        continue
                    for sample in result.samples:
                        _write_sample(writer, spool, sample, truncated)
                        keys.append(sample["key"])
                        sample_frames.append(sample["meta"]["frames"])
                        facts.append(_index_facts(sample["meta"]))
                        counts["seconds"] += sample["meta"]["seconds"]
                    total += result.sum
                    total_sq += result.sumsq
                    counts["accepted"] += 1
                    counts["truncated"] += int(truncated)
        tar = writer.close()
        storage.write_file(storage.join(task.output, task.name + TAR_SUFFIX), tar_path)
    summary = ShardSummary(
        name=task.name + TAR_SUFFIX,
        split=task.split,
        samples=len(keys),
        frames=sum(sample_frames),
        seconds=counts["seconds"],
        bytes=tar.bytes,
        sha256=tar.sha256,
        sum=total.tolist(),
        sumsq=total_sq.tolist(),
        count=sum(sample_frames),
        accepted=counts["accepted"],
        rejected=len(rejects),
        truncated=counts["truncated"],
        rejects=rejects,
    )
    storage.write_json(
        storage.join(task.output, task.name + INDEX_SUFFIX),
        summary.to_index(keys, sample_frames, facts),
    )
    summary.task_seconds = time.perf_counter() - started
    summary.s3_retries = sum(storage.retry_counts().values()) - retries
    log.info(
        "%s: %d samples from %d files (%d rejected) in %.1f s",
        summary.name,
        summary.samples,
        summary.accepted,
        summary.rejected,
        summary.task_seconds,
    )
    return summary


def _encode_file(uri: str, task: ShardTask, result: _FileResult) -> tuple[_FileResult, bool]:
    """Segment and featurize one file into ``result``; returns it and the truncated flag.

    Raises:
        AudioError: the file is rejected (possibly after some segments were spooled).
    """
    rate = features.preset_config(task.preset).sample_rate
    reader = iter_segments(uri, task.segment_seconds, rate, min_seconds=task.min_seconds)
    batch: list[Segment] = []
    for segment in reader:
        if batch and segment.samples.numel() != batch[0].samples.numel():
            _featurize(uri, batch, task, rate, result)  # the shorter final segment goes alone
            batch = []
        batch.append(segment)
        if len(batch) == task.batch_segments:
            _featurize(uri, batch, task, rate, result)
            batch = []
    if batch:
        _featurize(uri, batch, task, rate, result)
    assert reader.info is not None  # set when iteration finished without raising
    return result, reader.info.truncated


def _featurize(
    uri: str, batch: list[Segment], task: ShardTask, rate: int, result: _FileResult
) -> None:
    waves = torch.stack([s.samples for s in batch])  # (B, samples)
    feats = features.extract_features(
        waves, task.preset, out_dtype=torch.float16
    ).numpy()  # (B, T, C)
    for segment, feat in zip(batch, feats, strict=True):
        wide = feat.astype(np.float64)  # stats of the stored float16 values
        result.sum += wide.sum(0)
        result.sumsq += np.einsum("tc,tc->c", wide, wide)
        sample = {
            "key": sample_key(uri, segment.index),
            "feat": result.put_npy(feat),
            "meta": {
                "source": uri,
                "source_sha1": source_sha1(uri),
                "segment": segment.index,
                "offset": segment.offset_seconds,
                "seconds": segment.samples.numel() / rate,
                "sample_rate": rate,
                "frames": int(feat.shape[0]),
                "preset": task.preset,
                **sample_facts(
                    segment.samples.numpy(), rate, clipped_fraction=segment.clipped_fraction
                ),
            },
        }
        if task.keep_audio:
            flac = io.BytesIO()
            soundfile.write(
                flac, segment.samples.numpy(), rate, format="FLAC", subtype=FLAC_SUBTYPE
            )
            sample["flac"] = result.put(flac.getvalue())
        result.samples.append(sample)


def _index_facts(meta: dict) -> dict:
    """What the shard index keeps of a sample's JSON: its source and facts (DESIGN §13)."""
    return {name: meta[name] for name in INDEX_FACT_FIELDS}


def _write_sample(
    writer: ShardTarWriter, spool: tempfile.SpooledTemporaryFile, sample: dict, truncated: bool
) -> None:
    """Members in the format's fixed order (``MEMBER_ORDER``): features, JSON, FLAC."""
    key = sample["key"]
    _copy_member(writer, spool, member_name(key, FEATURE_SUFFIX), *sample["feat"])
    meta = dict(sample["meta"], truncated=truncated)
    meta_bytes = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    writer.add(member_name(key, META_SUFFIX), meta_bytes)
    if "flac" in sample:
        _copy_member(writer, spool, member_name(key, AUDIO_SUFFIX), *sample["flac"])


def _copy_member(
    writer: ShardTarWriter, spool: tempfile.SpooledTemporaryFile, name: str, offset: int, size: int
) -> None:
    spool.seek(offset)
    writer.add(name, spool, size)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
