"""Training-step benchmark: DeepSpeed (ZeRO-2 config of this repo) vs a plain torch loop.

    OMP_NUM_THREADS=2 python bench/train_step.py            # CPU, fp32, one process

Same model (4 layers, 256 hidden, 4 heads, ffn 1024), same batch (16 x 512 frames x 324),
same optimizer (AdamW), same precision; reports the median step time of each and the overhead
ratio, plus model TFLOP/s from `flops_per_frame`. Prints one JSON line.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from musicoder.model import (
    MusiCoder,
    flops_per_frame,
    reconstruction_loss,
    variant_config,
)
from musicoder.training.train import default_single_process_env
from musicoder.training.dsconfig import build_deepspeed_config, read_deepspeed_json

from gpu import synthetic_batch  # bench/ is sys.path[0] when run as a script

CONFIG = variant_config("tiny", num_layers=4, hidden=256, heads=4, ffn=1024)
BATCH, FRAMES, STEPS, WARMUP = 16, 512, int(os.environ.get("BENCH_STEPS", 4)), 1
LR = 1e-4


def time_steps(step) -> float:
    times = []
    for i in range(WARMUP + STEPS):
        start = time.perf_counter()
        step()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import deepspeed

    batch = synthetic_batch(BATCH, FRAMES, torch.device("cpu"))
    torch.manual_seed(0)
    model = MusiCoder(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def plain():
        loss = reconstruction_loss(model(batch.masked_input, batch.valid).reconstruction, batch)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    plain_s = time_steps(plain)
    default_single_process_env()
    deepspeed.init_distributed(dist_backend="gloo")
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "deepspeed", "zero2.json")
    cfg = build_deepspeed_config(
        read_deepspeed_json(path),
        source=path,
        lr=LR,
        warmup_steps=1,
        max_steps=100,
        micro_batch=BATCH,
        grad_accum=1,
        precision="fp32",
    )
    torch.manual_seed(0)
    ds_model = MusiCoder(CONFIG)
    engine, *_ = deepspeed.initialize(
        model=ds_model, model_parameters=ds_model.parameters(), config=cfg
    )

    def ds():
        out = engine(batch.masked_input, batch.valid)
        engine.backward(reconstruction_loss(out.reconstruction, batch).total)
        engine.step()

    ds_s = time_steps(ds)
    flops = flops_per_frame(CONFIG, FRAMES) * BATCH * FRAMES
    print(
        json.dumps(
            {
                "bench": "train_step",
                "device": "cpu",
                "precision": "fp32",
                "threads": torch.get_num_threads(),
                "plain_step_s": round(plain_s, 3),
                "deepspeed_step_s": round(ds_s, 3),
                "deepspeed_overhead": round(ds_s / plain_s - 1, 3),
                "plain_tflops": round(flops / plain_s / 1e12, 4),
            }
        )
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
