"""Training-side faults with real components (issue 14, DESIGN §9): a torn newest checkpoint,
a dead or hung node of a two-launcher job, preemption through the launchers.

A torn tag is one whose files changed after its save (a node's unflushed writes lost on a shared
filesystem, a file deleted or truncated): resume falls back to the previous complete tag and
export refuses the torn one. The two-launcher tests start `deepspeed --hostfile H --no_ssh
--node_rank R` once per "node" (a hostfile naming this machine twice), as SLURM's `srun` does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from fixtures_training import (
    REPO,
    RUN_TIMEOUT_S,
    pretrain_command,
    run_command,
    run_pretrain,
    start_two_nodes,
    stop_group,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from musicoder.training import checkpoint

# Two-launcher jobs: tiny, a checkpoint every 2 steps, no validation or images.
NODE_SETTINGS = (
    "train.max_steps=1000",
    "train.save_every=2",
    "train.val_every=0",
    "train.image_every=0",
)
COLLECTIVE_TIMEOUT_S = 20  # long enough for start-up skew between the two launchers here
RANK_PATTERN = "--local_rank="  # as platform/ signals the ranks (tests/test_platform.py)


def _losses(tb_dir) -> dict[int, float]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("loss/total")}


def test_resume_with_only_torn_checkpoints_fails_in_one_line(shard_set, tmp_path):
    out = tmp_path / "run"
    tag = out / "checkpoints" / "global_step4"
    tag.mkdir(parents=True)
    (tag / checkpoint.STATE_FILE).write_text("{}")  # its save never finished: no file list
    (tag.parent / checkpoint.LATEST).write_text(tag.name)
    proc = run_command(pretrain_command(out, str(shard_set), procs=None, resume=True))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == (
        f"error: {tag.parent}: no complete checkpoint (global_step4: no "
        f"{checkpoint.FILE_LIST} (its save did not finish))\n"
    )


@pytest.mark.integration
def test_torn_newest_checkpoint_resumes_from_the_previous_one(zero2_run, shard_set, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(zero2_run.out, out)
    shutil.rmtree(out / "tensorboard")  # keep only the resumed run's events
    ckpt = out / "checkpoints"
    assert checkpoint.latest_tag(str(ckpt)) == "global_step16"
    torn = next((ckpt / "global_step16").glob("zero_pp_rank_1_*optim_states.pt"))
    with open(torn, "r+b") as f:  # rank 1's optimizer shard lost its second half
        f.truncate(torn.stat().st_size // 2)

    export = run_command(
        [sys.executable, str(REPO / "launch" / "export.py"), str(out), str(tmp_path / "enc")]
    )
    assert export.returncode == 2 and not (tmp_path / "enc").exists()
    error = export.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in export.stderr, export.stderr
    assert "global_step16: torn checkpoint" in error[0] and torn.name in error[0], error
    assert "newest complete one is " + str(ckpt / "global_step12") in error[0], error

    run = run_pretrain(out, str(shard_set), resume=True)
    assert run.returncode == 0, run.log[-3000:]
    assert "checkpoint " + str(ckpt / "global_step16") + " is torn" in run.log, run.log[-3000:]
    assert "resumed from" in run.log and "global_step12" in run.log
    # Nothing but the four steps after step 12 was redone, exactly as the uninterrupted run did.
    resumed, reference = _losses(out / "tensorboard"), _losses(zero2_run.out / "tensorboard")
    assert sorted(resumed) == [13, 14, 15, 16]
    for step, value in resumed.items():
        assert value == pytest.approx(reference[step], rel=1e-3, abs=1e-6), step
    assert checkpoint.complete_tag(str(ckpt)) == ("global_step16", [])  # saved afresh


def _wait_for_checkpoint(ckpt, nodes, step: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (
        checkpoint.latest_tag(str(ckpt)) is None
        or checkpoint.read_state(str(ckpt), checkpoint.latest_tag(str(ckpt))).step < step
    ):
        assert all(p.poll() is None for p in nodes), "a node exited before its checkpoint"
        assert time.monotonic() < deadline, f"no step-{step} checkpoint"
        time.sleep(0.1)


def _group_gone(proc: subprocess.Popen, wait_s: float = 30.0) -> bool:
    """Whether every process of a launcher's group has exited (loader workers included)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the launcher: a zombie still counts as a member of its group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dead", "hung"])
def test_a_dead_or_hung_node_ends_the_job_and_resume_continues(shard_set, tmp_path, fault):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    settings = [*NODE_SETTINGS, f"train.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"]
    nodes = start_two_nodes(out, str(shard_set), tmp_path, settings=settings)
    try:
        _wait_for_checkpoint(ckpt, nodes, 2)
        os.killpg(nodes[1].pid, fault)  # node 1's launcher, rank and loader worker
        injected = time.monotonic()
        # Node 0 ends on its own: a closed socket (dead node) or the collective timeout (hung).
        returncode = nodes[0].wait(timeout=RUN_TIMEOUT_S)
        ended_s = time.monotonic() - injected
        assert _group_gone(nodes[0]), "a process of node 0 outlived its launcher"
    finally:
        for proc in nodes:
            stop_group(proc)
    log = (tmp_path / "node0.log").read_text()
    assert returncode != 0, log[-3000:]
    if fault == signal.SIGSTOP:
        assert f"Timed out waiting {COLLECTIVE_TIMEOUT_S * 1000}ms" in log, log[-3000:]
    last_step = max(int(m) for m in re.findall(r"step (\d+) loss", log))
    tag, torn = checkpoint.complete_tag(str(ckpt))
    saved = checkpoint.read_state(str(ckpt), tag).step
    print(
        f"{fault.name}: node 0 exited {returncode} {ended_s:.1f} s after the fault; last "
        f"logged step {last_step}, last complete checkpoint step {saved}, torn {torn}"
    )
    if fault == signal.SIGKILL:
        return  # the checkpoint left is complete; resuming from it is the same as below
    # Resume on the surviving node alone (1 rank: the 2-rank checkpoint goes universal).
    run = run_pretrain(
        out,
        str(shard_set),
        procs=None,
        resume=True,
        settings=[*NODE_SETTINGS, f"train.max_steps={saved + 1}"],
    )
    assert run.returncode == 0, run.log[-3000:]
    assert f"resumed from {ckpt / tag}" in run.log, run.log[-3000:]
    state = checkpoint.read_state(str(ckpt), checkpoint.tag_for(saved + 1))
    assert (state.step, state.world_size) == (saved + 1, 1)


@pytest.mark.integration
def test_sigterm_to_every_process_of_both_nodes_checkpoints_one_step(shard_set, tmp_path):
    """Preemption as a scheduler delivers it to a job step (and as the launchers pass it on):
    every process of both nodes, loader workers included, gets SIGTERM."""
    import psutil

    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    settings = [NODE_SETTINGS[0], "train.save_every=1000"]
    nodes = start_two_nodes(out, str(shard_set), tmp_path, settings=settings)
    log0 = tmp_path / "node0.log"
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "step 2 loss" not in log0.read_text():
            assert all(p.poll() is None for p in nodes) and time.monotonic() < deadline
            time.sleep(0.1)
        # The pattern platform/ uses to signal the ranks only matches ranks and their workers.
        for proc in nodes:
            runner = psutil.Process(proc.pid)
            (launch,) = runner.children()
            for process in (runner, launch, *launch.children(recursive=True)):
                is_rank = process.pid not in (runner.pid, launch.pid)  # or its worker
                assert (RANK_PATTERN in " ".join(process.cmdline())) == is_rank, process
        for proc in nodes:
            os.killpg(proc.pid, signal.SIGTERM)
        # The launchers SIGKILL their ranks 30 s after their own SIGTERM: the save fits.
        assert all(_group_gone(proc, RUN_TIMEOUT_S) for proc in nodes)
    finally:
        for proc in nodes:
            stop_group(proc)
    logs = [(tmp_path / f"node{node}.log").read_text() for node in (0, 1)]
    stops = [int(m) for log in logs for m in re.findall(r"stopped by signal at step (\d+)", log)]
    assert len(stops) == 2 and stops[0] == stops[1], "\n".join(log[-2000:] for log in logs)
    assert not any("Traceback" in log for log in logs), "\n".join(log[-2000:] for log in logs)
    assert checkpoint.complete_tag(str(ckpt)) == (checkpoint.tag_for(stops[0]), [])
    state = checkpoint.read_state(str(ckpt), checkpoint.tag_for(stops[0]))
    assert (state.step, state.world_size) == (stops[0], 2)
