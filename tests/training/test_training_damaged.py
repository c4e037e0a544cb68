"""Pre-training over a damaged shard (DESIGN §9): a shard whose bytes changed after the manifest
was written is named in a warning and counted in TensorBoard, and training goes on; more damaged
shards than `data.max_damaged_shards` stop every rank with one line."""

from __future__ import annotations

import shutil

import pytest
from fixtures_training import run_pretrain
from shard_damage import overwrite_middle
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DAMAGED = "shard-000002.tar"
# One epoch is 72 clips / 12 = 6 steps on one rank: every shard is read to its end.
SHORT = (
    "train.max_steps=7",
    "train.save_every=7",
    "train.val_every=0",
    "train.image_every=0",
    "train.micro_batch=12",
)


@pytest.fixture(scope="module")
def damaged_set(shard_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged") / "set"
    shutil.copytree(shard_set, root)
    overwrite_middle(root / DAMAGED)
    return root


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_training_goes_on_and_counts_a_damaged_shard(damaged_set, tmp_path):
    run = run_pretrain(tmp_path / "run", str(damaged_set), procs=None, settings=SHORT)
    assert run.returncode == 0, run.log[-3000:]
    assert f"damaged shard {damaged_set / DAMAGED}" in run.log
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    counted = {e.step: e.value for e in acc.Scalars("data/skipped_shards")}
    assert counted[7] == 1.0, counted


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_too_many_damaged_shards_stop_every_rank_with_one_line(damaged_set, tmp_path):
    run = run_pretrain(
        tmp_path / "run", str(damaged_set), procs=2, settings=(*SHORT, "data.max_damaged_shards=0")
    )
    assert run.returncode != 0
    errors = [line for line in run.log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.log[-3000:]
    assert "more than data.max_damaged_shards=0" in errors[0]
    assert str(damaged_set / DAMAGED) in errors[0]
