"""Pre-training on a weighted mixture of two shard sets through `launch/pretrain.py`: the
expected shares are logged, TensorBoard gets `data/source/<name>`, and a run resumed from its
step-4 checkpoint draws the same sources and reaches the same losses as the uninterrupted run."""

from __future__ import annotations

import shutil

import pytest
from fixtures_training import run_pretrain
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from musicoder.shardset.manifest import mix_manifests, read_manifest
from musicoder.training import checkpoint

STEPS = ("train.max_steps=8", "train.save_every=4", "train.val_every=0", "train.image_every=0")


def _scalars(tb_dir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.integration
@pytest.mark.timeout(600)  # two launches; generous for a loaded machine
def test_mixture_logs_per_source_shares_and_resumes_exactly(
    few_shard_set, uneven_shard_set, tmp_path
):
    # few: 23 clips x 4 = 92 draws per epoch; uneven: 42 x 0.25 = 10.5 -> 89.8% / 10.2%
    sources = (
        f"data.sources=[{{uri: {few_shard_set}, weight: 4, name: few}}, "
        f"{{uri: {uneven_shard_set}, weight: 0.25, name: uneven}}]"
    )
    settings = (*STEPS, sources)
    # data.manifest='' clears the one-source shorthand the shared command line sets.
    full = run_pretrain(tmp_path / "full", "''", procs=None, settings=settings)
    assert full.returncode == 0, full.log[-3000:]
    assert "data sources (expected share of samples): few 89.8%, uneven 10.2%" in full.log
    ref = _scalars(full.out / "tensorboard")
    few, uneven = ref["data/source/few"], ref["data/source/uneven"]
    assert sorted(few) == list(range(1, 9))
    for step in few:
        assert few[step] + uneven[step] == pytest.approx(1.0)
    assert sum(few.values()) / len(few) > 0.7  # weights are honoured (expected 0.898)
    assert min(uneven.values()) < max(uneven.values())  # drawn, not a fixed split
    # Checkpoints (and so exports) carry the mixture's pooled statistics.
    state = checkpoint.read_state(str(full.out / "checkpoints"), "global_step8")
    mixture = mix_manifests(
        "m", [read_manifest(str(few_shard_set)), read_manifest(str(uneven_shard_set))], [4, 0.25]
    )
    assert state.stats == mixture.stats.to_dict()

    # Resume from the step-4 checkpoint of the same run: steps 5-8 replay it exactly.
    out = tmp_path / "resumed"
    shutil.copytree(full.out, out, ignore=shutil.ignore_patterns("tensorboard", "global_step8"))
    (out / "checkpoints" / checkpoint.LATEST).write_text("global_step4")
    resumed = run_pretrain(out, "''", procs=None, settings=settings, resume=True)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "resumed from" in resumed.log and "resuming on other data" not in resumed.log
    after = _scalars(out / "tensorboard")
    for tag in ("data/source/few", "data/source/uneven"):
        assert after[tag] == {step: ref[tag][step] for step in range(5, 9)}, tag
    for step, loss in after["loss/total"].items():
        assert loss == pytest.approx(ref["loss/total"][step], rel=1e-3, abs=1e-6), step


@pytest.mark.integration
def test_mixture_on_two_ranks_keeps_equal_batches_and_the_weights(
    few_shard_set, uneven_shard_set, tmp_path
):
    # Two ranks with one loader worker each: 2 slots share each source (few has fewer shards
    # than slots, so it is split by sample index); every rank must take the same batch count.
    sources = (
        f"data.sources=[{{uri: {few_shard_set}, weight: 4, name: few}}, "
        f"{{uri: {uneven_shard_set}, weight: 0.25, name: uneven}}]"
    )
    run = run_pretrain(tmp_path / "run", "''", settings=(*STEPS, sources))
    assert run.returncode == 0, run.log[-3000:]
    state = checkpoint.read_state(str(run.out / "checkpoints"), "global_step8")
    assert (state.step, state.world_size, state.samples_seen) == (8, 2, 8 * 4 * 2)
    assert len(state.position.consumed) == 1 and state.position.world_size == 2
    shares = _scalars(run.out / "tensorboard")["data/source/few"]
    assert sorted(shares) == list(range(1, 9))
    assert sum(shares.values()) / len(shares) > 0.7  # expected 0.898, over both ranks
