"""Loader benchmark: one loader worker's delivered frames/s vs the raw tar read rate.

    OMP_NUM_THREADS=1 python bench/loader.py [--shards 4 --clips 32]

Measures in one run, on the same freshly written shards (30 s clips, 646 frames x 324):
  raw: read every tar member's bytes (webdataset tar iterator, no decoding);
  worker: the full per-worker path (npy decode, CMVN, crop to 512, collate, CFM/CCM masking).
Then, from `flops_per_frame`, how many frames/s one H100 consumes for the base model at 45%
MFU and hence how many loader workers per GPU that needs. Prints one JSON line.
"""

import json
import math
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures_training import write_shard_set  # noqa: E402  (the test-data factory)

from musicoder import storage  # noqa: E402
from musicoder.data import DataConfig, ShardStream, read_manifest  # noqa: E402
from musicoder.model import MaskingConfig, flops_per_frame, variant_config  # noqa: E402

CLIP_FRAMES = 646  # 30 s at 22,050 Hz, hop 1024
H100_BF16_TFLOPS = 989.0
TARGET_MFU = 0.45
SEQ_LEN = 512
BATCH = 16


def raw_rate(manifest) -> float:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    start, frames = time.perf_counter(), 0
    for shard in manifest.train:
        with storage.open_read(shard.uri) as f:
            for _ in group_by_keys(tar_file_expander([{"url": shard.uri, "stream": f}])):
                frames += CLIP_FRAMES
    return frames / (time.perf_counter() - start)


def worker_rate(manifest, root: str) -> float:
    cfg = DataConfig(manifest=root, max_frames=SEQ_LEN, num_workers=0, shuffle_buffer=64)
    stream = ShardStream(manifest, cfg, MaskingConfig(), rank=0, world_size=1, batch_size=BATCH,
                         seed=0)
    start = time.perf_counter()
    frames = sum(int(batch.features.shape[0] * batch.features.shape[1]) for batch, _ in stream)
    return frames / (time.perf_counter() - start)


def main() -> None:
    shards = int(os.environ.get("BENCH_SHARDS", 4))
    clips = int(os.environ.get("BENCH_CLIPS", 32))
    with tempfile.TemporaryDirectory() as tmp:
        write_shard_set(pathlib.Path(tmp), [clips] * shards, frames=(CLIP_FRAMES, CLIP_FRAMES))
        manifest = read_manifest(tmp)
        raw_rate(manifest)  # warm the page cache so both passes read from memory
        raw, worker = raw_rate(manifest), worker_rate(manifest, tmp)
    gpu = H100_BF16_TFLOPS * 1e12 * TARGET_MFU / flops_per_frame(variant_config("base"), SEQ_LEN)
    print(json.dumps({"bench": "loader", "raw_tar_frames_per_s": round(raw),
                      "worker_frames_per_s": round(worker), "worker_vs_raw": round(worker / raw, 3),
                      "h100_base_frames_per_s_at_45pct_mfu": round(gpu),
                      "workers_per_gpu": math.ceil(gpu / worker)}))


if __name__ == "__main__":
    main()
