"""Build the DeepSpeed config dict from the DeepSpeed JSON and the pretrain YAML (DESIGN §7).

Ownership is strict so that each knob lives in one file: the JSON owns ZeRO stage, offload,
clipping, optimizer type and its non-LR parameters, scheduler type and communication; the
pretrain YAML owns lr, warmup, max_steps, micro batch, accumulation and precision, which are
injected here. A JSON that sets an injected key is refused, naming the file and the key, rather
than silently winning or losing. Global batch = micro batch x accumulation x world size, so it
follows the number of ranks.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from musicoder import storage

log = logging.getLogger(__name__)

SCHEDULERS = ("WarmupCosineLR", "WarmupDecayLR")
DEFAULT_OPTIMIZER = {"type": "AdamW", "params": {"betas": [0.9, 0.98], "weight_decay": 0.01}}
# Dotted keys the YAML owns; any of them in the JSON is an error.
INJECTED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer.params.lr",
    "scheduler.params.total_num_steps",
    "scheduler.params.warmup_num_steps",
    "scheduler.params.warmup_max_lr",
    "bf16.enabled",
    "fp16.enabled",
    "bfloat16.enabled",
)


def read_deepspeed_json(uri: str) -> dict[str, Any]:
    """Read a DeepSpeed JSON (local path or URI).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: not a JSON object.
    """
    try:
        data = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: top level must be an object")
    return data


def _has(cfg: dict, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def build_deepspeed_config(
    base: dict[str, Any],
    *,
    source: str,
    lr: float,
    warmup_steps: int,
    max_steps: int,
    micro_batch: int,
    grad_accum: int,
    precision: str,
    load_universal: bool = False,
    on_cpu: bool = False,
) -> dict[str, Any]:
    """Merge the YAML-owned training knobs into a DeepSpeed config.

    Args:
        base: the DeepSpeed JSON as a dict (not modified).
        source: its path, for error messages.
        lr: peak learning rate.
        warmup_steps: linear warm-up steps.
        max_steps: total optimizer steps (scheduler length).
        micro_batch: clips per rank per micro step.
        grad_accum: micro steps per optimizer step.
        precision: "bf16", "fp16" or "fp32".
        load_universal: load a universal checkpoint (world-size change on resume).
        on_cpu: running on DeepSpeed's CPU accelerator: unless the JSON says otherwise, use
            torch's AdamW (`torch_adam`) instead of DeepSpeed's fused op, whose JIT build costs
            minutes on a fresh machine and buys nothing for CPU-sized models.

    Returns:
        A new dict for `deepspeed.initialize(config=...)`.

    Raises:
        ValueError: the JSON sets a key owned by the pretrain YAML, or names an unsupported
            scheduler.
    """
    for key in INJECTED_KEYS:
        if _has(base, key):
            raise ValueError(
                f"{source}: sets '{key}', which the pretrain YAML owns "
                "(train.lr/warmup_steps/max_steps/micro_batch/grad_accum/precision)"
            )
    cfg = copy.deepcopy(base)
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = grad_accum
    optimizer = cfg.setdefault("optimizer", copy.deepcopy(DEFAULT_OPTIMIZER))
    optimizer.setdefault("params", {})["lr"] = lr
    if on_cpu:
        optimizer["params"].setdefault("torch_adam", True)
    scheduler = cfg.setdefault("scheduler", {"type": SCHEDULERS[0]})
    if scheduler.get("type") not in SCHEDULERS:
        raise ValueError(
            f"{source}: scheduler.type must be one of {list(SCHEDULERS)}, "
            f"got {scheduler.get('type')!r}"
        )
    params = scheduler.setdefault("params", {})
    params["total_num_steps"] = max_steps
    params["warmup_num_steps"] = max(warmup_steps, 1)
    params.setdefault("warmup_type", "linear")
    if scheduler["type"] == "WarmupDecayLR":
        params["warmup_max_lr"] = lr
    if precision in ("bf16", "fp16"):
        cfg[precision] = {**cfg.get(precision, {}), "enabled": True}
    if load_universal:
        cfg.setdefault("checkpoint", {})["load_universal"] = True
    return cfg


def zero_stage(cfg: dict[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when absent)."""
    return int(cfg.get("zero_optimization", {}).get("stage", 0))
