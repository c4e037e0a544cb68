"""Checkpoint bookkeeping around DeepSpeed: client state, `latest`, pruning, resume, export.

DeepSpeed writes model and optimizer shards on every rank; this module adds what makes them
safe to resume from. The client state is a dataclass saved as JSON beside the shards (and in
DeepSpeed's client_state), so resume decisions (world size changed?) need no unpickling. A
checkpoint counts only once `latest` names it, and `latest` is written by rank 0 after a barrier,
so a half-written tag is never picked. Before `latest`, rank 0 also writes the tag's file list
(every file and its size, listed once all ranks' files are on disk); resume and export check a
tag against it, so a tag torn afterwards (a node's unflushed writes lost on a shared filesystem,
a file deleted or truncated) is noticed and resume falls back to the previous complete tag.
Sizes, not hashes: a lost or partial write changes a size, and checking costs one `stat` per
file instead of reading gigabytes. A world-size change is handled with DeepSpeed's universal
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
TEACHER_FILE = "teacher.safetensors"  # the EMA teacher of `loss.teacher_weight`, rank 0 writes it
UNIVERSAL_DONE = "musicoder_universal_done"
FILE_LIST = "musicoder_files.json"  # {relative path: size in bytes}, written last in a tag
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


def _files_on_disk(tag_dir: str) -> dict[str, int]:
    """Every file under `tag_dir` except the file list itself: {relative path: size}."""
    found = {}
    for root, _, names in os.walk(tag_dir):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, tag_dir)] = os.path.getsize(path)
    found.pop(FILE_LIST, None)
    return found


def write_file_list(tag_dir: str) -> None:
    """Record every file of a finished save and its size (rank 0, after all ranks wrote)."""
    storage.write_json(os.path.join(tag_dir, FILE_LIST), _files_on_disk(tag_dir))


def torn_reason(ckpt_dir: str, tag: str) -> str | None:
    """Why a tag is not a complete checkpoint (a missing or resized file, no file list), or
    None when every file its list names is there with its recorded size."""
    tag_dir = os.path.join(ckpt_dir, tag)
    if not os.path.isdir(tag_dir):
        return "the tag folder is missing"
    try:
        expected = storage.read_json(os.path.join(tag_dir, FILE_LIST))
    except FileNotFoundError:
        return f"no {FILE_LIST} (its save did not finish)"
    except ValueError as exc:
        return f"unreadable {FILE_LIST} ({exc})"
    for name, size in sorted(expected.items()):
        path = os.path.join(tag_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} is {os.path.getsize(path)} bytes, {size} when saved"
    return None


def _tags_up_to_latest(ckpt_dir: str) -> list[str]:
    """Tags no newer than the one `latest` names, newest first (empty without `latest`)."""
    path = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(path):
        return []
    named = TAG_PATTERN.match(open(path, encoding="utf-8").read().strip())
    if named is None:
        raise ValueError(f"{path}: does not name a checkpoint tag")
    limit = int(named.group(1))
    steps = [int(m.group(1)) for name in os.listdir(ckpt_dir) if (m := TAG_PATTERN.match(name))]
    return [tag_for(step) for step in sorted({*steps, limit}, reverse=True) if step <= limit]


def complete_tag(ckpt_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete tag at or before `latest`, and the newer torn ones skipped.

    Returns:
        `(tag, torn)`: tag is None when there is no `latest` (nothing saved yet); `torn` lists
        `(tag, reason)` for each newer tag that failed `torn_reason`, newest first.

    Raises:
        ValueError: `latest` exists but no tag it covers is complete.
    """
    torn = []
    for tag in _tags_up_to_latest(ckpt_dir):
        reason = torn_reason(ckpt_dir, tag)
        if reason is None:
            return tag, torn
        torn.append((tag, reason))
    if torn:
        listed = "; ".join(f"{tag}: {reason}" for tag, reason in torn)
        raise ValueError(f"{ckpt_dir}: no complete checkpoint ({listed})")
    return None, torn


def save(engine, ckpt_dir: str, state: ClientState, *, keep_last: int, teacher=None) -> str:
    """Save a checkpoint on every rank, then publish it as `latest` and prune old ones.

    Must be called on all ranks together. Returns the tag. `teacher` (the EMA teacher of
    `loss.teacher_weight`, identical on every rank) is written by rank 0 as `TEACHER_FILE`
    before the file list, so a tag without it is torn.
    """
    import torch.distributed as dist

    tag = tag_for(state.step)
    tag_dir = os.path.join(ckpt_dir, tag)
    rank0 = dist.get_rank() == 0
    if rank0:  # the sidecar goes in first: without `latest` naming the tag, it is inert
        for stale in (tag_dir, tag_dir + UNIVERSAL_SUFFIX):  # left by a torn or crashed save
            shutil.rmtree(stale, ignore_errors=True)
        os.makedirs(tag_dir)
        storage.write_json(os.path.join(tag_dir, STATE_FILE), state.to_dict())
    dist.barrier()  # no rank writes into the tag before a stale copy is gone
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
    if rank0 and teacher is not None:
        import safetensors.torch

        weights = {k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
        safetensors.torch.save_file(weights, os.path.join(tag_dir, TEACHER_FILE))
    dist.barrier()  # every rank's shards are on disk before the tag counts
    if rank0:
        write_file_list(tag_dir)
        storage.write_text(os.path.join(ckpt_dir, LATEST), tag)
        prune(ckpt_dir, keep_last)
        log.info("saved checkpoint %s", tag_dir)
    dist.barrier()
    return tag


def load_teacher(ckpt_dir: str, tag: str, teacher) -> bool:
    """Load the EMA teacher saved with `tag` (a universal tag reads its source tag's file).

    Returns:
        False when the tag has none (the teacher term was off when it was saved).
    """
    import safetensors.torch

    path = os.path.join(ckpt_dir, tag.removesuffix(UNIVERSAL_SUFFIX), TEACHER_FILE)
    if not os.path.exists(path):
        return False
    teacher.load_state_dict(safetensors.torch.load_file(path, device=str(_device(teacher))))
    return True


def _device(module):
    return next(module.parameters()).device


def prune(ckpt_dir: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete tags (never the one `latest` names),
    plus torn tags, tags newer than `latest` (left by a crash mid-save) and stale universal
    copies. With `keep_last` >= 2 (a config rule), a complete tag older than `latest` always
    remains to fall back to if the newest is later found torn."""
    current = latest_tag(ckpt_dir)
    if current is None:
        return
    complete = [tag for tag in _tags_up_to_latest(ckpt_dir) if torn_reason(ckpt_dir, tag) is None]
    keep = set(complete[:keep_last]) | {current}
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
    (the latest tag unless a tag dir is given), and check that the tag is complete.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the tag is torn (names the file and the newest complete tag, if any).
    """
    path = os.path.abspath(path.rstrip("/"))
    name = os.path.basename(path)
    if os.path.isfile(os.path.join(path, STATE_FILE)) or (
        TAG_PATTERN.match(name) and os.path.isdir(path)
    ):
        ckpt_dir, tag = os.path.dirname(path), name
    else:
        found = [d for d in (os.path.join(path, CHECKPOINTS_DIR), path) if _tags_up_to_latest(d)]
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoint (no '{LATEST}' file or tag dir)")
        ckpt_dir, tag = found[0], _tags_up_to_latest(found[0])[0]
    reason = torn_reason(ckpt_dir, tag)
    if reason is not None:
        try:
            fallback, _ = complete_tag(ckpt_dir)
        except ValueError:
            fallback = None
        hint = (
            f"; the newest complete one is {os.path.join(ckpt_dir, fallback)}" if fallback else ""
        )
        raise ValueError(f"{os.path.join(ckpt_dir, tag)}: torn checkpoint, {reason}{hint}")
    return ckpt_dir, tag


def export_encoder(path: str, out_dir: str) -> str:
    """Write `encoder.safetensors` + `config.json` from a checkpoint of any ZeRO stage.

    Args:
        path: run dir, its `checkpoints/` dir, or one tag dir.
        out_dir: export folder (local path or URI, as `save_encoder` accepts).

    Returns:
        The tag that was exported.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the tag is torn (see `resolve_checkpoint`).
    """
    ckpt_dir, tag = resolve_checkpoint(path)  # before the heavy imports: a torn tag fails fast
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from musicoder.pretrained import save_encoder
    from musicoder.training.config import PretrainConfig

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
