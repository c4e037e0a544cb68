"""GPU benchmark (issue 6, DESIGN §10): pre-training throughput and batched feature extraction.

    python bench/gpu.py                          # CUDA: base + large, bf16, ZeRO-2, T = 512
    python bench/gpu.py --device cpu --tiny      # CPU smoke test of the same code path
    make gpu-bench                               # installs carried wheels first (bench/gpu_bench.sh)

Training: `MusiCoder` under `deepspeed.initialize` with `configs/deepspeed/zero2.json` (the
optimizer switched to torch's AdamW so no DeepSpeed op is JIT-compiled), one rank, synthetic
masked batches (random features, the real CFM/CCM masking; no shards, no loader), bf16, the same
forward/loss/backward/step calls as `musicoder.training.train`. After warm-up steps, timed steps give
frames/s, model TFLOP/s from `flops_per_frame` and MFU against the dense bf16 datasheet peak
(989 TFLOP/s for H100 and H200 SXM). Features: `extract_features` on a batch of 30 s waveforms
on the device, in x realtime (audio seconds per wall second). One JSON line per measurement.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from musicoder.features import extract_features
from musicoder.model import (
    Batch,
    MaskingConfig,
    MusiCoder,
    draw_masks,
    model_input,
    flops_per_frame,
    reconstruction_loss,
    variant_config,
)
from musicoder.training.dsconfig import build_deepspeed_config, read_deepspeed_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM dense bf16, datasheet
MICRO_BATCH = {"tiny": 2, "base": 64, "large": 32}
SAMPLE_RATE = 22050


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(batch: int, frames: int, device: torch.device) -> Batch:
    """A seeded random batch of `batch` x `frames` x 324 features with CFM/CCM masks applied
    (also the batch of bench/train_step.py)."""
    gen = torch.Generator().manual_seed(0)
    clean = Batch(
        features=torch.randn(batch, frames, 324, generator=gen),
        valid=torch.ones(batch, frames, dtype=torch.bool),
    )
    drawn = draw_masks(clean, MaskingConfig(), gen)
    return dataclasses.replace(drawn, masked_input=model_input(drawn)).to(device)


def bench_training(name: str, args, device: torch.device) -> dict:
    import deepspeed

    config = variant_config(name)
    micro = args.micro_batch or MICRO_BATCH[name]
    path = os.path.join(ROOT, "configs", "deepspeed", "zero2.json")
    base = read_deepspeed_json(path)
    base["optimizer"]["params"]["torch_adam"] = True  # no fused-Adam JIT build on the box
    ds_config = build_deepspeed_config(
        base,
        source=path,
        lr=1e-4,
        warmup_steps=1,
        max_steps=10**6,
        micro_batch=micro,
        grad_accum=1,
        precision=args.precision,
    )
    torch.manual_seed(0)
    model = MusiCoder(config)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config
    )
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    batch = synthetic_batch(micro, args.seq, device)
    inputs = batch.masked_input.to(dtype)

    def step() -> None:
        out = engine(inputs, batch.valid)
        engine.backward(reconstruction_loss(out.reconstruction.float(), batch).total)
        engine.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - start
    frames_per_s = micro * args.seq * args.steps / elapsed
    tflops = frames_per_s * flops_per_frame(config, args.seq) / 1e12
    record = {
        "bench": "gpu_train",
        "variant": name,
        "device": str(device),
        "precision": args.precision,
        "zero": 2,
        "seq_len": args.seq,
        "micro_batch": micro,
        "steps": args.steps,
        "step_s": round(elapsed / args.steps, 4),
        "frames_per_s": round(frames_per_s),
        "tflops": round(tflops, 2),
        "mfu": round(tflops / args.peak_tflops, 4),
        "peak_tflops": args.peak_tflops,
    }
    if device.type == "cuda":
        record["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del engine, model, batch, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return record


def bench_features(args, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    waves = (
        0.1 * torch.randn(args.feature_batch, args.feature_seconds * SAMPLE_RATE, generator=gen)
    ).to(device)
    extract_features(waves)  # warm-up: kernels, caches
    sync(device)
    start = time.perf_counter()
    for _ in range(args.feature_reps):
        extract_features(waves)
    sync(device)
    elapsed = time.perf_counter() - start
    audio = args.feature_batch * args.feature_seconds * args.feature_reps
    return {
        "bench": "gpu_features",
        "device": str(device),
        "preset": "musicoder324",
        "batch": args.feature_batch,
        "clip_seconds": args.feature_seconds,
        "x_realtime": round(audio / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model, few steps (smoke test)")
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(MICRO_BATCH))
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS)
    parser.add_argument("--feature-batch", type=int, default=64)
    parser.add_argument("--feature-seconds", type=int, default=30)
    parser.add_argument("--feature-reps", type=int, default=5)
    args = parser.parse_args()
    if args.tiny:
        args.variants = args.variants or ["tiny"]
        args.seq, args.warmup, args.steps = min(args.seq, 64), 1, 2
        args.feature_batch, args.feature_seconds, args.feature_reps = 2, 5, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available (use --device cpu --tiny)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29517"),
    ):
        os.environ.setdefault(key, value)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    emit(
        {
            "bench": "gpu_env",
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
    )
    for name in args.variants or ["base", "large"]:
        try:
            emit(bench_training(name, args, device))
        except torch.OutOfMemoryError as exc:  # report and go on with the next measurement
            emit({"bench": "gpu_train", "variant": name, "error": f"out of memory: {exc}"[:300]})
    emit(bench_features(args, device))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
