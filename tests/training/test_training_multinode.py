"""The multi-node launch path of musicoder/training/train.py on one machine (issue 6, DESIGN §7).

Two `deepspeed --hostfile H --no_ssh --node_rank R` launchers, one per "node" of a hostfile that
names this machine twice (`localhost` and `127.0.0.1`, one slot each), form one 2-rank job over
gloo, the way SLURM's `srun` starts one launcher per node. No environment tweak is needed: with
`--no_ssh` the runner starts its node's ranks itself (no pdsh), and without CUDA DeepSpeed
picks its CPU accelerator on its own.
"""

from __future__ import annotations

import pytest
from fixtures_training import start_two_nodes, stop_group

from musicoder.training import checkpoint

TIMEOUT_S = 240
STEPS = 4


@pytest.mark.integration
def test_two_launchers_form_one_zero3_job(shard_set, tmp_path):
    out = tmp_path / "run"
    nodes = start_two_nodes(
        out,
        str(shard_set),
        tmp_path,
        zero=3,
        settings=(
            f"train.max_steps={STEPS}",
            "train.save_every=2",
            "train.val_every=100",
            "train.image_every=100",
        ),
    )
    try:
        for proc in nodes:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc in nodes:  # only on failure: never leave a launcher behind
            if proc.poll() is None:
                stop_group(proc)
    logs = [(tmp_path / f"node{node}.log").read_text() for node in (0, 1)]
    for node, (proc, log) in enumerate(zip(nodes, logs, strict=True)):
        assert proc.returncode == 0, f"node {node}:\n{log[-3000:]}"
        for crash in ("Traceback", "Aborted", "terminate called", "core dumped"):
            assert crash not in log, f"node {node}: {crash}\n{log[-3000:]}"
        # ZeRO-3 hooks see the encoder's output tensors (DeepSpeed warns once, innermost first).
        assert "unknown inputs or outputs type (<class 'musicoder.model.encoder" not in log
    # One job, not two: both nodes' ranks joined one world of 2 and saved one checkpoint.
    tags = out / "checkpoints"
    assert checkpoint.latest_tag(str(tags)) == f"global_step{STEPS}"
    state = checkpoint.read_state(str(tags), f"global_step{STEPS}")
    assert (state.step, state.world_size) == (STEPS, 2)
    assert state.samples_seen == STEPS * 4 * 2  # micro batch 4 (RUN_SETTINGS) x 2 ranks
    shards = sorted(p.name for p in (tags / f"global_step{STEPS}").iterdir())
    assert sum("zero_pp_rank_1" in name for name in shards) >= 1, shards  # rank 1 (node 1) saved
    assert "done at step 4" in logs[0]
