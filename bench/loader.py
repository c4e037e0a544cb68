"""Loader benchmark: one loader worker's delivered frames/s vs the raw tar read rate.

    OMP_NUM_THREADS=1 python bench/loader.py      # BENCH_SHARDS=8 BENCH_CLIPS=32 BENCH_REPEATS=5

Measures in one run, on the same freshly written shards (30 s clips, 646 frames x 324 float16),
each pass repeated and the best kept (the machine is shared):
  raw_wds: read every tar member's bytes with webdataset's tar iterator, no decoding (the
    reference named in issue 6);
  raw_ours: the same with `musicoder.shardset.reader.iter_samples`, the reader the worker uses;
  worker: the full per-worker path (tar read, npy decode + finite check, crop to 512, collate
    into one float32 batch with CMVN, CFM/CCM masks drawn), batches of 16, in process (in a
    DataLoader worker the batch is allocated in shared memory instead). The clock starts after
    the first batch, which also fills the 64-clip shuffle buffer: the steady state of an epoch.
  worker_unverified: the same with `data.verify_sha256` off; `verify_cost` is the share of the
    worker's CPU time the streamed sha256 check costs (the damaged-shard check, DESIGN §9);
  sha256: hashlib's sha256 over the tar bytes alone, for scale against the raw read rate;
  model_input: what the trainer then spends building the masked input from a delivered batch
    (`model_input`), on this CPU; on a GPU it runs after the host-to-device copy.
Frames: raw counts every stored frame read (646 per clip); the worker counts frames delivered
(512 per clip after the crop), which is what a GPU consumes; `*_clips_per_s` compare per clip.
Rates are per CPU second of this process (`time.process_time`), i.e. what one dedicated core
does; wall-clock rates are printed too but swing with the other jobs on a shared machine.
Then, from `flops_per_frame`, how many frames/s one H100 consumes for the base model at 45% MFU
and hence how many loader workers per GPU that needs. Prints one JSON line.
"""

import datetime
import hashlib
import json
import math
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures_training import write_shard_set  # the test-data factory
from webdataset.tariterators import group_by_keys, tar_file_expander

from musicoder import storage
from musicoder.data.stream import DataConfig, ShardStream
from musicoder.model import MaskingConfig, flops_per_frame, variant_config
from musicoder.model.masking import model_input
from musicoder.shardset.manifest import read_manifest
from musicoder.shardset.reader import iter_samples

CLIP_FRAMES = 646  # 30 s at 22,050 Hz, hop 1024
H100_BF16_TFLOPS = 989.0
TARGET_MFU = 0.45
SEQ_LEN = 512
BATCH = 16
SHUFFLE = 64


def _wds_samples(f, uri):
    return group_by_keys(tar_file_expander([{"url": uri, "stream": f}]))


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(frames: int, start: tuple[float, float]) -> tuple[float, float]:
    """(frames per CPU second, frames per wall second) since `start`."""
    wall, cpu = (now - then for now, then in zip(_clock(), start, strict=True))
    return frames / cpu, frames / wall


def raw_rate(manifest, reader) -> tuple[float, float]:
    """Stored frames/s (CPU, wall) reading every sample's bytes with `reader(f, uri)`."""
    start, frames = _clock(), 0
    for shard in manifest.train:
        with storage.open_read(shard.uri) as f:
            for _ in reader(f, shard.uri):
                frames += CLIP_FRAMES
    return _rates(frames, start)


def sha256_rate(manifest) -> tuple[float, float]:
    """Stored frames/s (CPU, wall) hashing every tar's bytes (already in memory)."""
    blobs = [storage.read_bytes(shard.uri) for shard in manifest.train]
    start = _clock()
    for blob in blobs:
        hashlib.sha256(blob).hexdigest()
    return _rates(sum(shard.samples for shard in manifest.train) * CLIP_FRAMES, start)


def _stream(manifest, root: str, verify: bool = True) -> ShardStream:
    cfg = DataConfig(
        manifest=root,
        max_frames=SEQ_LEN,
        num_workers=0,
        shuffle_buffer=SHUFFLE,
        verify_sha256=verify,
    )
    return ShardStream(
        manifest, cfg, MaskingConfig(), rank=0, world_size=1, batch_size=BATCH, seed=0
    )


def model_input_ms(manifest, root: str, repeats: int = 20) -> float:
    """CPU ms the trainer spends in `model_input` per delivered batch (best of `repeats`)."""
    batch, _ = next(iter(_stream(manifest, root)))
    times = []
    for _ in range(repeats):
        start = time.process_time()
        model_input(batch)
        times.append(time.process_time() - start)
    return min(times) * 1e3


def worker_rate(manifest, root: str, verify: bool = True) -> tuple[float, float]:
    """Delivered frames/s (CPU, wall) of one in-process worker after its first batch."""
    batches = iter(_stream(manifest, root, verify))
    next(batches)
    start, frames = _clock(), 0
    for batch, _ in batches:
        frames += batch.features.shape[0] * batch.features.shape[1]
    return _rates(frames, start)


def main() -> None:
    shards = int(os.environ.get("BENCH_SHARDS", 8))
    clips = int(os.environ.get("BENCH_CLIPS", 32))
    repeats = int(os.environ.get("BENCH_REPEATS", 5))
    with tempfile.TemporaryDirectory() as tmp:
        write_shard_set(pathlib.Path(tmp), [clips] * shards, frames=(CLIP_FRAMES, CLIP_FRAMES))
        manifest = read_manifest(tmp)
        raw_rate(manifest, _wds_samples)  # warm the page cache so every pass reads from memory
        build_ms = model_input_ms(manifest, tmp)
        wds, ours, worker, unverified, sha = (
            [max(rates) for rates in zip(*(measure() for _ in range(repeats)), strict=True)]
            for measure in (
                lambda: raw_rate(manifest, _wds_samples),
                lambda: raw_rate(manifest, iter_samples),
                lambda: worker_rate(manifest, tmp),
                lambda: worker_rate(manifest, tmp, verify=False),
                lambda: sha256_rate(manifest),
            )
        )
    gpu = H100_BF16_TFLOPS * 1e12 * TARGET_MFU / flops_per_frame(variant_config("base"), SEQ_LEN)
    cpu, wall = 0, 1  # indexes into each (CPU-time rate, wall-clock rate) pair
    print(
        json.dumps(
            {
                "bench": "loader",
                "date": datetime.date.today().isoformat(),
                "clips": shards * clips,
                "raw_wds_frames_per_cpu_s": round(wds[cpu]),
                "raw_ours_frames_per_cpu_s": round(ours[cpu]),
                "worker_frames_per_cpu_s": round(worker[cpu]),
                "worker_unverified_frames_per_cpu_s": round(unverified[cpu]),
                "verify_cost": round(1 - worker[cpu] / unverified[cpu], 3),
                "sha256_frames_per_cpu_s": round(sha[cpu]),
                "sha256_vs_raw_ours": round(sha[cpu] / ours[cpu], 3),
                "worker_vs_raw_wds": round(worker[cpu] / wds[cpu], 3),
                "worker_vs_raw_ours": round(worker[cpu] / ours[cpu], 3),
                "worker_vs_raw_wds_per_clip": round(
                    worker[cpu] / SEQ_LEN / (wds[cpu] / CLIP_FRAMES), 3
                ),
                "wall": {
                    "raw_wds": round(wds[wall]),
                    "raw_ours": round(ours[wall]),
                    "worker": round(worker[wall]),
                },
                "trainer_model_input_cpu_ms_per_batch": round(build_ms, 2),
                "h100_base_frames_per_s_at_45pct_mfu": round(gpu),
                "workers_per_gpu": math.ceil(gpu / worker[cpu]),
            }
        )
    )


if __name__ == "__main__":
    main()
