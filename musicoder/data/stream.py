"""Streaming training batches from WebDataset shards (DESIGN §5, §7).

Reads a shard set through its manifest (`musicoder.shardset.manifest`; local folder or `s3://`
prefix, via `musicoder.storage.open_read`, never a shell pipe) with the shard format's one tar
reader (`musicoder.shardset.reader`), and turns it into `Batch` objects with their masks drawn
(applied later, on the training device, by `model_input`) inside DataLoader workers.

Every rank yields exactly the same number of batches per epoch: `musicoder.data.plan.plan_epoch`
gives each (rank, worker) slot its shards and a batch quota; a slot that runs dry re-draws from
its shards (then from all shards) instead of stopping early.

Mixtures (`data.sources`, or a view whose sources have different weights; see
`musicoder.data.mixture`): the train shards are grouped into parts of one per-sample weight,
`plan_mixture` plans every part over the slots with one quota per slot from the weighted total,
and each slot interleaves its parts' streams by a seeded draw. With one part (one shard set, a
view of equal weights, a mixture of equal weights) this is exactly the one-shard-set stream.
Validation reads the union of the val shards, unweighted, so val losses compare across mixes.
Each batch counts its samples per source, for `data/source/<name>` in TensorBoard.

Samples are decoded and checked by `musicoder.shardset.sample` (npy header parsed without
pickle, `np.frombuffer` views, JSON). A worker keeps each clip as stored (float16) until
it is cropped, then copies the crops straight into one preallocated float32 batch (converting
on the copy; in a DataLoader worker that batch lives in shared memory, so handing it to the
trainer copies nothing) and normalizes them there in place, `x * inv_std - mean * inv_std`.
Masks are drawn in the worker (`draw_masks`) but applied on the training device
(`model_input`): the worker never writes a second (B, T, C) tensor. Each batch carries the id
and sample count of its worker so the trainer can record an exact resume position.

Damaged shards (DESIGN §9): with `verify_sha256` every byte a worker reads is hashed on the way
(no second pass, no extra request) and compared with the manifest's `sha256` and `bytes` when the
shard ends; a worker checks each shard on its first complete read only (hashing runs at ~1.5 GB/s
per core, about as fast as a worker consumes bytes, so checking every epoch would double the
worker's CPU). A shard whose bytes changed since the manifest was written is excluded from then on
by that worker; its samples that passed the per-sample checks (npy header, shape, finite values)
before its end was reached have been used once. A shard that cannot be read (a broken tar, a
failed S3 read) keeps its readable prefix, as before. Each batch reports the shards its worker
found damaged or unreadable; the trainer turns more than `max_damaged_shards` of them, over the
whole job, into `DamagedShardsError`. An S3 endpoint that stays unavailable through every retry
(`StorageUnavailableError`) is not a damaged shard: it ends the run, to be resumed from its last
checkpoint once storage is back. Batches also carry their worker's S3 retry count.

The DataLoader keeps its workers across epochs (`persistent_workers`). The workers hold copies of
the stream, so the epoch and the per-worker resume skips live in a small shared-memory tensor that
`set_epoch` / `set_position` write and `__iter__` reads when each epoch starts. Workers ignore
SIGTERM and SIGINT: a stop signal sent to a whole process group (SLURM, the DeepSpeed launcher,
Ctrl-C) is for the trainer's stop flag, and must not kill a worker while the trainer saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import signal
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from musicoder import storage
from musicoder.data.collate import collate
from musicoder.data.mixture import SourceConfig, interleave
from musicoder.data.plan import WorkerPlan, derive_seed, plan_mixture
from musicoder.model import STD_FLOOR, Batch, MaskingConfig
from musicoder.model.masking import draw_masks
from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.manifest import Manifest, ShardRef
from musicoder.shardset.reader import BufferPool, iter_samples
from musicoder.shardset.sample import decode_sample
from musicoder.storage import StorageUnavailableError, retry_counts

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where training data comes from and how clips become batches."""

    # manifest.json, view.json or their folder; local path, file:// or s3://. Empty: the
    # mixture of data.sources, or without those DEFAULT_MANIFEST (shards/).
    manifest: str = ""
    # A weighted mixture instead of data.manifest: [{uri: ..., weight: 1.0, name: ...}, ...]
    # (weight = draws per sample and epoch; see musicoder.data.mixture).
    sources: list[SourceConfig] = field(default_factory=list)
    preset: str = "musicoder324"  # feature preset the model expects; the manifest must match
    max_frames: int = 512  # random crop length (frames); shorter clips are padded
    # Each training crop is two windows of max_frames / 2 drawn independently from one clip,
    # one after the other: the contrastive term's halves (`loss.contrastive_weight`) then come
    # from different moments of a recording, not from one contiguous stretch.
    window_pairs: bool = False
    shuffle_buffer: int = 256  # samples held per worker for shuffling (0 = read order)
    num_workers: int = 2  # DataLoader worker processes per rank (0 = in the training process)
    prefetch_factor: int = 2  # batches each worker keeps ready
    normalize: bool = True  # CMVN with the manifest's per-channel mean/std
    val_max_batches: int = 8  # validation batches per rank per evaluation
    verify_sha256: bool = True  # hash shards while reading; a mismatch excludes the shard
    max_damaged_shards: int = 8  # more damaged or unreadable train shards (whole job) stop it

    def __post_init__(self) -> None:
        if self.manifest and self.sources:
            raise ValueError(
                f"data.manifest ({self.manifest}) and data.sources are both set; a mixture "
                "takes data.sources alone (clear the other: --set data.manifest='')"
            )
        names = [source.name for source in self.sources if source.name]
        if len(set(names)) < len(names):
            raise ValueError(f"data.sources: names must differ, got {names}")
        for key in ("max_frames", "prefetch_factor", "val_max_batches"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("shuffle_buffer", "num_workers", "max_damaged_shards"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.{key}: must be >= 0, got {getattr(self, key)}")
        if self.window_pairs and self.max_frames % 2:
            raise ValueError(
                f"data.window_pairs: a crop is two windows of max_frames / 2, so data.max_frames "
                f"must be even, got {self.max_frames}"
            )


@dataclass
class DataPosition:
    """Where a rank's stream stands: the epoch and samples consumed per loader worker.

    Every rank consumes the same number of batches from each worker, so rank 0's position
    describes all ranks.
    """

    epoch: int = 0
    consumed: list[int] = field(default_factory=list)  # samples, per worker, this epoch
    world_size: int = 1
    num_workers: int = 1
    batch_size: int = 1


@dataclass
class BatchInfo:
    """Where a batch came from, for resume positions and data-health metrics."""

    worker: int
    consumed: int  # samples this worker has delivered this epoch, this batch included
    skipped_shards: int
    skipped_samples: int
    frames: int  # valid frames in the batch
    damaged: tuple[int, ...] = ()  # shards (indexes) this worker found damaged or unreadable
    s3_retries: int = 0  # S3 requests retried and bodies re-opened by this worker so far
    sources: tuple[int, ...] = ()  # samples in the batch per source of the manifest


class DamagedShardsError(ShardFormatError):
    """More damaged or unreadable shards than `data.max_damaged_shards` allows."""


class ShardChecksumError(ShardFormatError):
    """A shard's bytes differ from what its manifest recorded (sha256 or size)."""


@dataclass
class _Reading:
    """One worker's reading state for one epoch: skip counters and its payload buffers."""

    pool: BufferPool
    shards: int = 0  # unreadable shards skipped
    samples: int = 0  # bad samples skipped
    failed: set[int] = field(default_factory=set)  # shards that failed this epoch


class _Verifier:
    """Read-through wrapper over a shard stream that hashes and counts every byte read."""

    DRAIN_BYTES = 1 << 20

    def __init__(self, f) -> None:
        self._f = f
        self.digest = hashlib.sha256()
        self.nbytes = 0

    def readinto(self, buffer) -> int:
        n = self._f.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.nbytes += n
        return n

    def check(self, ref: ShardRef) -> None:
        """Read what the tar reader left (end blocks, padding) and compare with `ref`.

        Raises:
            ShardChecksumError: size or sha256 differ from the manifest's.
        """
        scratch = bytearray(self.DRAIN_BYTES)
        while self.readinto(scratch):
            pass
        if ref.bytes is not None and self.nbytes != ref.bytes:
            raise ShardChecksumError(f"{self.nbytes} bytes, the manifest says {ref.bytes}")
        found = self.digest.hexdigest()
        if ref.sha256 and found != ref.sha256:
            raise ShardChecksumError(
                f"sha256 {found[:12]}..., the manifest says {ref.sha256[:12]}..."
            )


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker init: leave SIGTERM/SIGINT to the trainer (it stops the workers)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _identity(item):
    return item


class ShardStream(IterableDataset):
    """Batches with drawn masks for one rank; iterate once per epoch after `set_epoch`.

    Yields `(Batch, BatchInfo)` pairs, exactly `batches_per_epoch` per rank per epoch.
    """

    def __init__(
        self,
        manifest: Manifest,
        config: DataConfig,
        masking: MaskingConfig,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        split: str = "train",
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.shards = manifest.train if split == "train" else manifest.val
        if not self.shards:
            raise ValueError(f"{manifest.uri}: no {split} shards")
        self.manifest, self.config, self.masking = manifest, config, masking
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.shuffle = seed, shuffle
        self.num_workers = max(1, config.num_workers)
        self.num_sources = max(1, len(manifest.sources))
        # Parts: train shards grouped by per-sample weight, in order of first appearance
        # (validation: one unweighted part).
        parts: dict[float, list[int]] = {}
        for i, ref in enumerate(self.shards):
            parts.setdefault(ref.weight if split == "train" else 1.0, []).append(i)
        self._parts = [tuple(shards) for shards in parts.values()]
        self._weights = list(parts)
        self._masses = [
            w * sum(self.shards[i].samples for i in part)
            for w, part in zip(self._weights, self._parts, strict=True)
        ]
        # [epoch, skip per worker]: shared with persistent DataLoader workers, read per epoch
        self._position = torch.zeros(1 + self.num_workers, dtype=torch.int64)
        if config.num_workers:
            self._position.share_memory_()
        stats = manifest.stats
        std = np.maximum(stats.std.astype(np.float32), STD_FLOOR)  # (C,)
        self._mean = torch.from_numpy(stats.mean.astype(np.float32)) if config.normalize else None
        self._inv_std = torch.from_numpy(1.0 / std) if config.normalize else None
        self.batches_per_epoch = sum(slot[0].batches for slot in self._plans(0))  # every epoch
        self._damaged: set[int] = set()  # checksum failures: excluded for the rest of the run
        self._verified: set[int] = set()  # shards this worker has checked (once is enough)

    def _plans(self, epoch: int) -> list[tuple[WorkerPlan, ...]]:
        """Per worker of this rank, one plan per part, with shard indexes into `self.shards`."""
        plans = plan_mixture(
            [[self.shards[i].samples for i in part] for part in self._parts],
            self._weights,
            world_size=self.world_size,
            num_workers=self.num_workers,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=epoch,
        )[self.rank]
        return [
            tuple(
                dataclasses.replace(plan, shards=tuple(part[i] for i in plan.shards))
                for plan, part in zip(worker, self._parts, strict=True)
            )
            for worker in plans
        ]

    @property
    def epoch(self) -> int:
        """The epoch the next iteration yields."""
        return int(self._position[0])

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._position[0] = epoch

    @property
    def skip(self) -> list[int]:
        """Samples each logical worker skips at the start of the next iteration (resume)."""
        return self._position[1:].tolist()

    @skip.setter
    def skip(self, skip: Sequence[int]) -> None:
        self._position[1:] = torch.tensor(skip, dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (also in persistent DataLoader workers)."""
        self.epoch, self.skip = epoch, [0] * self.num_workers

    def set_position(self, position: DataPosition) -> None:
        """Resume mid-epoch. Exact on the same world size, workers and batch size; otherwise
        the new slots skip an equal share of the samples consumed so far (approximate)."""
        self.epoch = position.epoch
        same = (position.world_size, position.num_workers, position.batch_size) == (
            self.world_size,
            self.num_workers,
            self.batch_size,
        )
        if same and len(position.consumed) == self.num_workers:
            self.skip = list(position.consumed)
            return
        total = sum(position.consumed) * position.world_size
        batches = min(total // (self.world_size * self.batch_size), self.batches_per_epoch)
        self.skip = [
            (batches // self.num_workers + (w < batches % self.num_workers)) * self.batch_size
            for w in range(self.num_workers)
        ]
        log.info(
            "data position from world %d x %d workers mapped to skip %s samples per worker",
            position.world_size,
            position.num_workers,
            self.skip,
        )

    def __iter__(self) -> Iterator[tuple[Batch, BatchInfo]]:
        info = get_worker_info()
        epoch, skips = self.epoch, self.skip  # read once, when the epoch starts
        # Batch b of an epoch comes from logical worker b % W (the DataLoader's round robin).
        # After a resume the DataLoader starts again at its worker 0, so rotate the mapping to
        # make that worker the logical one that is next in line.
        rotation = sum(skips) // self.batch_size
        worker = ((info.id if info is not None else 0) + rotation) % self.num_workers
        if info is not None and info.num_workers != self.num_workers:
            raise ValueError(
                f"DataLoader has {info.num_workers} workers, stream planned for {self.num_workers}"
            )
        if info is not None:  # a loader process: one thread each (in-process, leave the trainer's)
            torch.set_num_threads(1)
        skip = skips[worker]
        plans = self._plans(epoch)[worker]
        reading = _Reading(BufferPool(limit=2 * self.batch_size))
        streams = [
            self._clips(plan, part, epoch, worker, reading) for part, plan in enumerate(plans)
        ]
        stream = streams[0]
        if len(streams) > 1:  # a mixture: a seeded draw picks the part of every sample
            rng = np.random.default_rng(derive_seed(self.seed, epoch, self.rank, worker, 1, 0))
            stream = interleave(streams, self._masses, rng)
        for _ in range(skip):
            next(stream)
        for index in range(skip // self.batch_size, plans[0].batches):
            drawn = [next(stream) for _ in range(self.batch_size)]
            clips = [clip for clip, _ in drawn]
            batch = collate(clips, mean=self._mean, inv_std=self._inv_std)
            for clip in clips:  # copied: their payload buffers can take the next samples
                reading.pool.give(clip)
            sources = np.bincount([source for _, source in drawn], minlength=self.num_sources)
            gen = torch.Generator().manual_seed(
                derive_seed(self.seed, epoch, self.rank, worker, index)
            )
            batch = draw_masks(batch, self.masking, gen)
            yield (
                batch,
                BatchInfo(
                    worker=worker,
                    consumed=(index + 1) * self.batch_size,
                    skipped_shards=reading.shards,
                    skipped_samples=reading.samples,
                    frames=int(batch.valid.sum()),
                    damaged=tuple(sorted(self._damaged | reading.failed)),
                    s3_retries=sum(retry_counts().values()),
                    sources=tuple(int(n) for n in sources),
                ),
            )

    def _clips(
        self, plan: WorkerPlan, part: int, epoch: int, worker: int, reading: _Reading
    ) -> Iterator[tuple[np.ndarray, int]]:
        """Cropped clips `(T, C)` as stored with their source index, in shuffled order,
        re-drawn without end, from one part's shards."""
        # Part 0 keeps the one-shard-set seed, so a one-part stream is unchanged by mixtures.
        rng = np.random.default_rng(
            derive_seed(self.seed, epoch, self.rank, worker, 1, *([part] if part else []))
        )
        # A buffer larger than the slot's share would re-read shards before the first batch.
        share = sum(self.shards[i].samples for i in plan.shards) // plan.stride
        size = min(self.config.shuffle_buffer, share) if self.shuffle else 0
        buffer: list[tuple[np.ndarray, int]] = []
        for item in self._records(plan, self._parts[part], rng, reading):
            if size > 1:
                buffer.append(item)
                if len(buffer) < size:
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                item = buffer.pop()
            yield self._prepare(item[0], rng), item[1]

    def _prepare(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        half = self.config.max_frames // 2
        if self.config.window_pairs and self.shuffle and feats.shape[0] >= half:
            # Two windows that may overlap (as SimCLR's crops); shorter clips stay whole.
            first, second = rng.integers(feats.shape[0] - half + 1, size=2)
            return np.concatenate([feats[first : first + half], feats[second : second + half]])
        extra = feats.shape[0] - self.config.max_frames
        if extra > 0:  # a view: nothing is copied until collation
            start = int(rng.integers(extra + 1)) if self.shuffle else 0
            feats = feats[start : start + self.config.max_frames]
        return feats

    def _records(
        self,
        plan: WorkerPlan,
        part: tuple[int, ...],
        rng: np.random.Generator,
        reading: _Reading,
    ) -> Iterator[tuple[np.ndarray, int]]:
        """Decoded samples (with their source index) of the slot's shards of one part, round
        after round; a round without any readable sample widens to every shard of the part,
        and if none of those is readable either, raise."""
        # Global sample index within the part, for plans that split shards by sample index.
        counts = np.cumsum([0] + [self.shards[i].samples for i in part])
        offsets = dict(zip(part, counts.tolist(), strict=False))
        shards, failed, dead = list(plan.shards), reading.failed, set(self._damaged)
        while True:
            delivered = 0
            for i in shards:
                if i in dead:
                    continue
                read = 0
                try:
                    for k, feats in enumerate(self._read_shard(i, reading)):
                        read += 1
                        if feats is not None and (offsets[i] + k) % plan.stride == plan.offset:
                            delivered += 1
                            yield feats, self.shards[i].source
                except StorageUnavailableError:  # the service, not the shard
                    raise
                except ShardChecksumError as exc:  # any sample may be wrong: never again
                    dead.add(i)
                    self._damaged.add(i)
                    failed.add(i)
                    reading.shards += 1
                    log.warning(
                        "damaged shard %s (changed since the manifest was written: %s); "
                        "excluded from now on, %d of its samples were read",
                        self.shards[i].uri,
                        exc,
                        read,
                    )
                except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
                    if read == 0:  # nothing usable: never open it again this epoch
                        dead.add(i)
                    if i not in failed:  # a readable prefix stays in use for re-draws
                        failed.add(i)
                        reading.shards += 1
                        log.warning(
                            "skipping unreadable shard %s after %d samples: %s",
                            self.shards[i].uri,
                            read,
                            exc.args[0] if exc.args else exc,
                        )
            if delivered == 0:
                if len(shards) == len(part) and plan.stride == 1:
                    raise ShardFormatError(f"{self.manifest.uri}: no readable samples in any shard")
                shards, plan = list(part), WorkerPlan((), 1, 0, plan.batches)
            if self.shuffle:
                rng.shuffle(shards)

    def _read_shard(self, i: int, reading: _Reading) -> Iterator[np.ndarray | None]:
        """Every sample of shard `i` in tar order, less the keys a view excludes; a bad sample
        yields None and is counted, so sample indexes stay aligned with the shard's count. With
        `verify_sha256`, the shard's bytes are checked against the manifest once its last
        sample has been taken (on this worker's first complete read of it).

        Raises:
            ShardChecksumError: the bytes differ from the manifest's sha256 or size.
        """
        ref = self.shards[i]
        uri = ref.uri
        with storage.open_read(uri) as f:
            verify = (
                self.config.verify_sha256
                and i not in self._verified
                and (ref.sha256 or ref.bytes is not None)
            )
            source = _Verifier(f) if verify else f
            for sample in iter_samples(source, uri, alloc=reading.pool.take):
                if sample["__key__"] in ref.excluded:  # read all the same: the sha256 covers it
                    continue
                try:
                    yield decode_sample(sample, self.manifest.channels, self.config.preset)[0]
                except ShardFormatError as exc:
                    reading.samples += 1
                    log.warning("skipping bad sample in %s: %s", uri, exc)
                    yield None
            if verify:
                source.check(ref)
                self._verified.add(i)


def error_line(exc: BaseException) -> str:
    """The last line of an error's message: a DataLoader worker's exception arrives re-raised
    with the worker's whole traceback in its message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[-1] if f"{name}: " in last else last


def make_loader(stream: ShardStream) -> DataLoader:
    """A DataLoader over `stream` with its configured workers, kept across epochs: build it
    once, then per epoch call `stream.set_epoch` (or `set_position`) and iterate it once."""
    workers = stream.config.num_workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=stream.config.prefetch_factor if workers else None,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_stop_signals,
    )
