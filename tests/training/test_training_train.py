"""Tests for musicoder/training/train.py: one-line errors for bad input, and real 2-rank
DeepSpeed runs (ZeRO-2 local, ZeRO-3 from S3) with kill/resume,
SIGTERM, 2 -> 1 rank resume and export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from fixtures_training import (
    REPO,
    RUN_TIMEOUT_S,
    allreduce_buffers,
    pretrain_command,
    run_command,
    run_env,
    run_pretrain,
)
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from musicoder.config import load_config
from musicoder.training.config import PretrainConfig
from musicoder.training import checkpoint

SCALARS = (
    "loss/total",
    "loss/cfm",
    "loss/ccm",
    "loss/val",
    "val/cfm",
    "val/ccm",
    "val/cfm_interpolate",
    "val/ccm_interpolate",
    "val/cfm_clip_mean",
    "val/ccm_clip_mean",
    "opt/lr",
    "opt/grad_norm",
    "perf/samples_per_s",
    "perf/frames_per_s",
    "perf/tflops_per_device",
    "perf/mfu",
    "perf/memory_gib",
)


def _events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalar(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _export(src, out) -> dict[str, torch.Tensor]:
    proc = run_command([sys.executable, str(REPO / "launch" / "export.py"), str(src), str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(str(out / "encoder.safetensors"))


# ---------------------------------------------------------------------------- unit


def _pretrain(command: list[str]) -> subprocess.CompletedProcess:
    return run_command(command)


def test_pretrain_cli_rejects_bad_input_in_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    proc = _pretrain(pretrain_command(tmp_path / "o", str(missing), procs=None))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == (
        f"error: {missing / 'manifest.json'}: no manifest; the shard set is missing or not "
        "complete\n"
    )
    proc = _pretrain([*pretrain_command(tmp_path / "o", "x", procs=None), "--set", "train.lrr=1"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "lrr" in proc.stderr


@pytest.mark.integration
def test_two_ranks_report_a_missing_manifest_once(tmp_path):
    """The DeepSpeed launcher's own exit report aside, the error line appears once per job."""
    missing = tmp_path / "nowhere"
    proc = _pretrain(pretrain_command(tmp_path / "o", str(missing), procs=2))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert output.count(f"error: {missing / 'manifest.json'}: no manifest") == 1, output[-3000:]
    assert "Traceback" not in output


# ---------------------------------------------------------------------------- 2-rank runs


@pytest.mark.integration
@pytest.mark.parametrize("run_name", ["zero2_run", "zero3_run"])
def test_run_learns_logs_and_checkpoints(run_name, request):
    run = request.getfixturevalue(run_name)
    acc = _events(run.out / "tensorboard")
    assert set(SCALARS) <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("reconstruction")] == [8, 16]
    loss = _scalar(acc, "loss/total")
    assert sorted(loss) == list(range(1, 17))
    assert sum(loss[s] for s in (13, 14, 15, 16)) < sum(loss[s] for s in (1, 2, 3, 4))
    val = _scalar(acc, "loss/val")
    assert val[16] < val[8]
    tags = sorted(p.name for p in (run.out / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["global_step12", "global_step16"]  # keep_last=2
    state = checkpoint.read_state(str(run.out / "checkpoints"), "global_step16")
    assert (state.step, state.world_size, state.samples_seen) == (16, 2, 16 * 4 * 2)
    assert state.preset == "musicoder324" and len(state.stats["mean"]) == 324
    saved = load_config(PretrainConfig, [str(run.out / "config.yaml")])
    assert saved.train.max_steps == 16
    assert run.shm_left == []  # DeepSpeed's CPU all-reduce buffers are not left in /dev/shm


@pytest.mark.integration
def test_export_zero3_equals_export_zero2(zero2_run, zero3_run, tmp_path):
    two = _export(zero2_run.out, tmp_path / "z2")
    three = _export(zero3_run.out / "checkpoints" / "global_step16", tmp_path / "z3")
    assert two.keys() == three.keys() and len(two) > 10
    for name, tensor in two.items():
        torch.testing.assert_close(three[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    meta = json.loads((tmp_path / "z3" / "config.json").read_text())
    assert meta["preset"] == "musicoder324" and meta["model"]["hidden"] == 128


@pytest.mark.integration
def test_sigkill_then_resume_continues_like_an_uninterrupted_run(zero2_run, shard_set, tmp_path):
    out = tmp_path / "run"
    command = pretrain_command(out, str(shard_set))
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = out / "checkpoints" / checkpoint.LATEST
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (latest.exists() and latest.read_text() == "global_step8"):
        assert proc.poll() is None and time.monotonic() < deadline, "no step-8 checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # launcher, ranks and loader workers
    proc.wait(30)
    assert allreduce_buffers(command) == []  # named in /dev/shm only during start-up
    for events in (out / "tensorboard").iterdir():
        events.rename(events.with_name("killed-" + events.name))  # keep only the resumed run
    run = run_pretrain(out, str(shard_set), resume=True)
    assert run.returncode == 0, run.log[-3000:]
    assert "resumed from" in run.log
    assert run.shm_left == []
    resumed = _events(
        next(p for p in (out / "tensorboard").iterdir() if not p.name.startswith("killed-"))
    )
    reference = _events(zero2_run.out / "tensorboard")
    for tag in ("loss/total", "opt/lr"):
        after, ref = _scalar(resumed, tag), _scalar(reference, tag)
        assert sorted(after) == list(range(9, 17))
        for step, value in after.items():
            assert value == pytest.approx(ref[step], rel=1e-3, abs=1e-6), (tag, step)


@pytest.mark.integration
def test_sigterm_stops_all_ranks_at_one_step(shard_set, tmp_path):
    import psutil

    out = tmp_path / "run"
    proc = subprocess.Popen(
        pretrain_command(
            out, str(shard_set), settings=["train.max_steps=100000", "train.save_every=100000"]
        ),
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "step 3 loss" in line:
                break

        def is_rank(p):  # loader workers are forks of a rank and share its command line
            return "--local_rank" in " ".join(p.cmdline())

        ranks = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if is_rank(p) and not is_rank(p.parent())
        ]
        assert len(ranks) == 2
        for rank in ranks:
            rank.send_signal(signal.SIGTERM)
        lines += proc.stdout.readlines()
        assert proc.wait(RUN_TIMEOUT_S) == 0  # the launcher exits 0 only if every rank did
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = "".join(lines)
    stops = sorted(
        int(line.rsplit(" ", 1)[1])
        for line in log.splitlines()
        if "stopped by signal at step" in line
    )
    assert len(stops) == 2 and stops[0] == stops[1], log[-3000:]
    tags = [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()]
    assert tags == [checkpoint.tag_for(stops[0])]
    assert checkpoint.latest_tag(str(out / "checkpoints")) == tags[0]


@pytest.mark.integration
def test_resume_two_ranks_on_one(zero2_run, shard_set, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(zero2_run.out, out)
    run = run_pretrain(
        out, str(shard_set), procs=None, resume=True, settings=["train.max_steps=20"]
    )
    assert run.returncode == 0, run.log[-3000:]
    ckpt = out / "checkpoints"
    assert (ckpt / "global_step16_universal" / checkpoint.UNIVERSAL_DONE).exists()
    state = checkpoint.read_state(str(ckpt), "global_step20")
    assert (state.step, state.world_size) == (20, 1)
    assert state.samples_seen == 16 * 4 * 2 + 4 * 4
    loss = _scalar(_events(out / "tensorboard"), "loss/total")
    assert all(0 < loss[s] < 2 for s in range(17, 21))


@pytest.mark.integration
def test_contrastive_run_trains_on_halves_and_exports_the_encoder_only(shard_set, tmp_path):
    settings = ["loss.contrastive_weight=0.5", "model.max_frames=32", "data.max_frames=64"]
    settings += ["train.max_steps=8"]
    run = run_pretrain(tmp_path / "run", str(shard_set), procs=None, settings=settings)
    assert run.returncode == 0, run.log[-3000:]
    acc = _events(run.out / "tensorboard")
    contrastive = _scalar(acc, "loss/contrastive")
    assert sorted(contrastive) == list(range(1, 9))
    assert all(0 < value < 10 for value in contrastive.values())
    pair_accuracy = _scalar(acc, "val/pair_accuracy")[8]
    assert 0.0 <= pair_accuracy <= 1.0 and _scalar(acc, "val/contrastive")[8] > 0
    weights = _export(run.out, tmp_path / "export")
    assert weights and not any(name.startswith(("projector", "head")) for name in weights)
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["model"]["max_frames"] == 32


@pytest.mark.integration
def test_teacher_run_resumes_its_teacher_exactly_and_exports_the_encoder_only(shard_set, tmp_path):
    # A fast teacher (decay 0.5): had resume restarted it from the initial weights, the
    # resumed losses would be far off the uninterrupted run's.
    settings = ["loss.teacher_weight=1", "loss.reconstruction_weight=0.5", "loss.teacher_decay=0.5"]
    full = run_pretrain(tmp_path / "full", str(shard_set), settings=settings)
    assert full.returncode == 0, full.log[-3000:]
    ckpt = full.out / "checkpoints"
    listed = json.loads((ckpt / "global_step16" / checkpoint.FILE_LIST).read_text())
    assert checkpoint.TEACHER_FILE in listed
    reference = _events(full.out / "tensorboard")
    assert set(_scalar(reference, "loss/teacher")) == set(range(1, 17))
    assert _scalar(reference, "val/teacher")[16] > 0

    out = tmp_path / "resumed"
    shutil.copytree(full.out, out, ignore=shutil.ignore_patterns("tensorboard", "global_step16"))
    (out / "checkpoints" / checkpoint.LATEST).write_text("global_step12")
    run = run_pretrain(out, str(shard_set), settings=settings, resume=True)
    assert run.returncode == 0, run.log[-3000:]
    resumed = _events(out / "tensorboard")
    for tag in ("loss/total", "loss/teacher"):
        after, ref = _scalar(resumed, tag), _scalar(reference, tag)
        assert sorted(after) == [13, 14, 15, 16]
        for step, value in after.items():
            assert value == pytest.approx(ref[step], rel=1e-3, abs=1e-6), (tag, step)
    weights = _export(out, tmp_path / "export")
    assert weights and not any(name.startswith(("regressor", "head")) for name in weights)


@pytest.mark.integration
def test_teacher_under_zero3_is_updated_from_the_gathered_encoder(shard_set, tmp_path):
    # Decay 0: after each step the teacher is a copy of the whole encoder, which ZeRO-3 keeps
    # partitioned over the two ranks; the saved teacher must equal the exported encoder.
    settings = ["loss.teacher_weight=1", "loss.teacher_decay=0", "train.max_steps=4"]
    run = run_pretrain(tmp_path / "run", str(shard_set), zero=3, settings=settings)
    assert run.returncode == 0, run.log[-3000:]
    teacher = load_file(str(run.out / "checkpoints" / "global_step4" / checkpoint.TEACHER_FILE))
    encoder = _export(run.out, tmp_path / "export")
    assert teacher.keys() == encoder.keys() and len(teacher) > 10
    for name, tensor in encoder.items():
        torch.testing.assert_close(teacher[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.integration
def test_frozen_input_projection_and_frozen_teacher_keep_their_initial_weights(shard_set, tmp_path):
    # ZeRO-3 partitions every parameter, frozen ones included; the input projection must come
    # out of training exactly as initialized, and a decay-1 teacher must stay the initial
    # encoder, while the rest of the encoder trains.
    settings = [
        "train.freeze_input_projection=true",
        "loss.teacher_weight=1",
        "loss.teacher_decay=1",
        "train.max_steps=4",
    ]
    run = run_pretrain(tmp_path / "run", str(shard_set), zero=3, settings=settings)
    assert run.returncode == 0, run.log[-3000:]
    config = load_config(PretrainConfig, [str(run.out / "config.yaml")])
    torch.manual_seed(config.train.seed)
    initial = config.build_model().encoder.state_dict()
    teacher = load_file(str(run.out / "checkpoints" / "global_step4" / checkpoint.TEACHER_FILE))
    encoder = _export(run.out, tmp_path / "export")
    for name, tensor in teacher.items():
        torch.testing.assert_close(tensor, initial[name], rtol=0, atol=0, msg=name)
    for name in ("input_proj.weight", "input_proj.bias"):
        torch.testing.assert_close(encoder[name], initial[name], rtol=0, atol=0, msg=name)
    trained = [n for n in encoder if not torch.equal(encoder[n], initial[n])]
    assert "layers.0.ffn.0.weight" in trained
    assert not any(name.startswith("input_proj") for name in trained)
