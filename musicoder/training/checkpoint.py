"""Checkpoint bookkeeping around DeepSpeed: client state, `latest`, pruning, resume, export.

DeepSpeed writes model and optimizer shards on every rank; this module adds what makes them
safe to resume from. The client state is a dataclass saved as JSON beside the shards (and in
DeepSpeed's client_state), so resume decisions (world size changed?) need no unpickling. A
checkpoint counts only once `latest` names it, and `latest` is written by rank 0 after a barrier,
so a half-written tag is never picked. A world-size change is handled with DeepSpeed's universal
checkpoint (`ds_to_universal`, then `load_universal`). Loading DeepSpeed's own `.pt` files
needs full unpickling, so only checkpoints this project wrote are loaded that way (DESIGN §7).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from musicoder import storage
from musicoder.data.stream import DataPosition

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "musicoder_state.json"
UNIVERSAL_SUFFIX = "_universal"
UNIVERSAL_DONE = "musicoder_universal_done"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


@dataclass
class ClientState:
    """What a run needs besides weights and optimizer to continue, and to export."""

    step: int = 0
    samples_seen: int = 0
    frames_seen: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    world_size: int = 1
    config: dict = field(default_factory=dict)  # resolved PretrainConfig
    preset: str = ""
    feature: dict = field(default_factory=dict)  # manifest's feature parameters
    stats: dict = field(default_factory=dict)  # {"mean": [C], "std": [C]}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientState:
        """Inverse of `to_dict`; unknown keys are an error."""
        data = dict(data)
        data["position"] = DataPosition(**data.get("position", {}))
        return cls(**data)


def tag_for(step: int) -> str:
    """Checkpoint tag of an optimizer step."""
    return f"global_step{step}"


def latest_tag(ckpt_dir: str) -> str | None:
    """The tag named by `ckpt_dir/latest`, or None when there is no complete checkpoint."""
    path = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(path):
        return None
    tag = open(path, encoding="utf-8").read().strip()
    if not TAG_PATTERN.match(tag) or not os.path.isdir(os.path.join(ckpt_dir, tag)):
        raise ValueError(f"{path}: names {tag!r}, which is not a checkpoint tag in {ckpt_dir}")
    return tag


def read_state(ckpt_dir: str, tag: str) -> ClientState:
    """Read a tag's client state JSON."""
    return ClientState.from_dict(storage.read_json(os.path.join(ckpt_dir, tag, STATE_FILE)))


def save(engine, ckpt_dir: str, state: ClientState, *, keep_last: int) -> str:
    """Save a checkpoint on every rank, then publish it as `latest` and prune old ones.

    Must be called on all ranks together. Returns the tag.
    """
    import torch.distributed as dist

    tag = tag_for(state.step)
    rank0 = dist.get_rank() == 0
    if rank0:  # the sidecar goes in first: without `latest` naming the tag, it is inert
        os.makedirs(os.path.join(ckpt_dir, tag), exist_ok=True)
        storage.write_json(os.path.join(ckpt_dir, tag, STATE_FILE), state.to_dict())
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    # ds_to_universal refuses checkpoints without this marker (plain data parallel: no TP/PP).
    universal = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    engine.save_checkpoint(
        ckpt_dir,
        tag=tag,
        save_latest=False,
        client_state={"musicoder": state.to_dict(), UNIVERSAL_CHECKPOINT_INFO: universal},
    )
    dist.barrier()  # every rank's shards are on disk before the tag counts
    if rank0:
        storage.write_text(os.path.join(ckpt_dir, LATEST), tag)
        prune(ckpt_dir, keep_last)
        log.info("saved checkpoint %s", os.path.join(ckpt_dir, tag))
    dist.barrier()
    return tag


def prune(ckpt_dir: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete tags (never the one `latest` names),
    plus tags newer than `latest` (left by a crash mid-save) and stale universal copies."""
    current = latest_tag(ckpt_dir)
    if current is None:
        return
    limit = int(TAG_PATTERN.match(current).group(1))
    steps = sorted(
        (int(m.group(1)), name) for name in os.listdir(ckpt_dir) if (m := TAG_PATTERN.match(name))
    )
    keep = {name for step, name in steps if step <= limit}
    keep = {name for _, name in [s for s in steps if s[1] in keep][-keep_last:]} | {current}
    for name in os.listdir(ckpt_dir):
        base = name.removesuffix(UNIVERSAL_SUFFIX)
        if TAG_PATTERN.match(base) and base not in keep:
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def to_universal(ckpt_dir: str, tag: str) -> str:
    """Convert a tag with DeepSpeed's `ds_to_universal` (rank 0 only; cached). Returns the
    universal tag name, to load with `"checkpoint": {"load_universal": true}`."""
    out_tag = tag + UNIVERSAL_SUFFIX
    out = os.path.join(ckpt_dir, out_tag)
    if os.path.isfile(os.path.join(out, UNIVERSAL_DONE)):
        return out_tag
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        os.path.join(ckpt_dir, tag),
        "--output_folder",
        out,
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    log.info("converting %s to a universal checkpoint", os.path.join(ckpt_dir, tag))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"{os.path.join(ckpt_dir, tag)}: ds_to_universal failed: {tail}")
    shutil.copy(os.path.join(ckpt_dir, tag, STATE_FILE), os.path.join(out, STATE_FILE))
    open(os.path.join(out, UNIVERSAL_DONE), "w").close()
    return out_tag


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """Find `(checkpoints dir, tag)` from a run dir, its `checkpoints/` dir or one tag dir
    (the latest tag unless a tag dir is given).

    Raises:
        FileNotFoundError: no complete checkpoint there.
    """
    path = os.path.abspath(path.rstrip("/"))
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return os.path.dirname(path), os.path.basename(path)
    for ckpt_dir in (os.path.join(path, CHECKPOINTS_DIR), path):
        if os.path.isfile(os.path.join(ckpt_dir, LATEST)):
            return ckpt_dir, latest_tag(ckpt_dir)
    raise FileNotFoundError(f"{path}: no complete checkpoint (no '{LATEST}' file or tag dir)")


def export_encoder(path: str, out_dir: str) -> str:
    """Write `encoder.safetensors` + `config.json` from a checkpoint of any ZeRO stage.

    Args:
        path: run dir, its `checkpoints/` dir, or one tag dir.
        out_dir: export folder (local path or URI, as `save_encoder` accepts).

    Returns:
        The tag that was exported.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from musicoder.pretrained import save_encoder
    from musicoder.training.config import PretrainConfig

    ckpt_dir, tag = resolve_checkpoint(path)
    state = read_state(ckpt_dir, tag)
    pretrain_cfg = PretrainConfig.from_dict(state.config)
    tag_dir = os.path.join(ckpt_dir, tag)
    if any(name.endswith("optim_states.pt") for name in os.listdir(tag_dir)):
        weights = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
    else:  # no ZeRO partitions: the module weights are the full model (DeepSpeed's own file)
        import torch

        blob = torch.load(
            os.path.join(tag_dir, "mp_rank_00_model_states.pt"),
            map_location="cpu",
            weights_only=False,
        )
        weights = {k: v.float() for k, v in blob["module"].items()}
    model = pretrain_cfg.build_model()
    model.load_state_dict(weights, strict=True)
    save_encoder(
        model,
        out_dir,
        extra={"preset": state.preset, "feature": state.feature, "stats": state.stats},
    )
    log.info("exported %s to %s", tag_dir, out_dir)
    return tag
