"""Tests for musicoder/demo/ and launch/demo.py: stages, reuse, commands, failures, the CLI, and
(slow) the whole pipeline end to end with reduced sizes."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from musicoder.config import ConfigError, load_config
from musicoder.demo import (
    STAGES,
    DemoConfig,
    DemoStageError,
    DemoState,
    Stage,
    format_summary,
    results_table,
    run_demo,
)
from musicoder.demo import command, stages
from musicoder.features import num_channels, num_frames

ROOT = pathlib.Path(__file__).resolve().parents[2]
IN_PROCESS = STAGES[:2]  # corpus, features: no child processes
# The smallest corpus with train/valid/test tracks of every genre, and a few training steps.
SMALL = ["--tracks", "18", "--seconds", "6", "--steps", "6"]
SMALL_SET = {"crop_frames": 64, "batch": 4, "workers": 1, "feature_tracks": 2, "val_fraction": 0.2}


def small_config(out: pathlib.Path, **overrides) -> DemoConfig:
    params = {"out": str(out), "tracks": 6, "seconds": 3.0, "feature_tracks": 3, "workers": 1}
    return DemoConfig(**{**params, **overrides})


def run_launch(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / "demo.py"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_demo_makes_corpus_and_features_then_reuses(tmp_path):
    cfg = small_config(tmp_path / "demo")
    state = run_demo(cfg, stages=IN_PROCESS)
    assert state.corpus is not None and not state.corpus.reused
    assert state.corpus.num_tracks == 6 and (tmp_path / "demo" / "corpus" / "labels.csv").is_file()
    feats = state.features
    assert feats is not None
    assert feats.shape == (3, num_frames(3 * 22050), num_channels("musicoder324"))
    assert feats.dtype == "float16" and sum(feats.formats.values()) == 3
    assert list(state.timings) == ["corpus", "features"]
    assert load_config(DemoConfig, files=[str(tmp_path / "demo" / "demo_config.yaml")]) == cfg

    summary = format_summary(cfg, state)
    for text in ("rock 1", "jazz 1", "musicoder324 float16 [3,", "realtime", "labels.csv"):
        assert text in summary, text
    assert "results" not in summary and "TensorBoard" not in summary  # nothing trained yet
    again = run_demo(cfg, stages=STAGES[:1])
    assert again.corpus.reused and again.corpus.files == state.corpus.files
    assert "reused" in format_summary(cfg, again) and again.reused == ["corpus"]


def test_failing_stage_stops_the_demo_and_is_named(tmp_path):
    ran = []

    def broken(cfg, state):
        raise ValueError("no space left\non device")

    stages_ = (
        Stage("broken", "fails", broken),
        Stage("after", "never runs", lambda c, s: ran.append(1)),
    )
    with pytest.raises(DemoStageError) as info:
        run_demo(small_config(tmp_path / "demo"), stages=stages_)
    assert str(info.value) == "stage 'broken' failed: ValueError: no space left on device"
    assert info.value.stage == "broken" and info.value.tail == [] and ran == []


def test_features_stage_failure_names_the_file(tmp_path):
    cfg = small_config(tmp_path / "demo", tracks=6, feature_tracks=6)
    run_demo(cfg, stages=STAGES[:1])
    (tmp_path / "demo" / "corpus" / "audio" / "00005.wav").write_bytes(b"RIFF, but not audio")
    with pytest.raises(DemoStageError, match=r"^stage 'features' failed: Unreadable.*00005\.wav"):
        run_demo(cfg, stages=IN_PROCESS)


def test_run_command_streams_filters_noise_and_keeps_the_tail(caplog):
    code = (
        "import sys\n"
        "for i in range(30): print('line', i)\n"
        "sys.stderr.write('[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: part2\\n')\n"
        "sys.stdout.write('bar 1%\\rbar 50%\\rbar 100%\\n'); print('done', flush=True)\n"
    )
    with caplog.at_level("INFO", logger=command.__name__):
        tail = command.run_command(python(code))
    assert tail[-1] == "done" and len(tail) == command.TAIL_LINES and "line 29" in tail
    assert not any("libmpg123/" in line for line in tail)
    assert caplog.messages[0].startswith("  $ ") and "libmpg123" in caplog.messages[-1]
    shown = [m.removeprefix(command.INDENT) for m in caplog.messages[1:-1]]
    assert shown[:2] == ["line 0", "line 1"] and shown[-3:] == ["bar 1%", "bar 100%", "done"]
    assert "bar 50%" not in shown  # redraws within PROGRESS_EVERY_S are dropped


def test_failing_command_raises_with_its_tail(tmp_path):
    argv = python("import sys; print('working'); sys.exit('error: bad input file x.wav')")
    stage = Stage("broken", "fails", lambda cfg, state: command.run_command(argv) and "")
    with pytest.raises(DemoStageError) as info:
        run_demo(small_config(tmp_path / "demo"), stages=(stage,))
    message = str(info.value)
    assert (
        message.startswith("stage 'broken' failed: CommandError: `")
        and "exited with code 1" in message
    )
    assert "\n" not in message and info.value.tail == ["working", "error: bad input file x.wav"]


def test_display_path_is_relative_below_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert command.display_path(str(tmp_path / "a" / "b")) == os.path.join("a", "b")
    assert command.display_path("/elsewhere/x") == "/elsewhere/x"
    assert command.display_path("rel/x") == "rel/x"
    assert command.format_command(["python", "a b", "--set", "x=1"]) == "python 'a b' --set x=1"


def _touch(path: pathlib.Path, text: str = "", mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_done_stages_are_skipped_without_running_anything(tmp_path):
    cfg = small_config(tmp_path / "demo", steps=40)
    out = tmp_path / "demo"
    _touch(out / "shards" / "manifest.json", "{}", mtime=1000)
    _touch(out / "run" / "checkpoints" / "latest", "global_step40", mtime=2000)
    (out / "run" / "checkpoints" / "global_step40").mkdir()
    _touch(out / "encoder" / "encoder.safetensors", mtime=3000)
    _touch(out / "encoder" / "config.json", "{}", mtime=3000)
    _touch(out / "corpus" / "labels.csv", mtime=1000)
    metrics = {"kind": "genre", "test": {"accuracy": 0.5}, "baselines": {}}
    _touch(out / "genre" / "metrics.json", json.dumps(metrics), mtime=4000)
    state = DemoState()
    assert (
        stages.pretrain_stage(cfg, state).startswith("skipped:")
        and state.checkpoint == "global_step40"
    )
    assert stages.export_stage(cfg, state).startswith("skipped:")
    assert stages.probe_stage("genre").run(cfg, state).startswith("skipped:")
    assert state.reused == ["pretrain", "export", "genre"] and state.metrics["genre"] == metrics


def test_results_table_lists_every_model_and_metric():
    genre = {
        "kind": "genre",
        "test": {"accuracy": 0.75},
        "baselines": {"random_init": {"accuracy": 0.5}, "handcrafted": {"accuracy": 0.625}},
    }
    tags = {
        "kind": "tagging",
        "test": {"roc_auc": 0.8, "pr_auc": 0.7},
        "baselines": {"random_init": {"roc_auc": 0.6}},
    }
    lines = results_table({"genre": genre, "tags": tags}).splitlines()
    assert lines[0].split() == ["task", "metric", "pretrained", "random_init", "handcrafted"]
    assert lines[1].split() == ["genre", "accuracy", "0.7500", "0.5000", "0.6250"]
    assert lines[2].split() == ["tags", "roc_auc", "0.8000", "0.6000", "-"]
    assert lines[3].split() == ["tags", "pr_auc", "0.7000", "-", "-"]


def test_config_validation():
    with pytest.raises(ConfigError, match="tracks: must be >= 1"):
        load_config(DemoConfig, overrides=["tracks=0"])
    with pytest.raises(ConfigError, match="preset"):
        load_config(DemoConfig, overrides=["preset=mfcc"])
    with pytest.raises(ConfigError, match="must be a local folder"):
        load_config(DemoConfig, overrides=["out=s3://bucket/demo"])
    with pytest.raises(ConfigError, match="segment_seconds: must be >= 2"):
        load_config(DemoConfig, overrides=["segment_seconds=1"])
    assert load_config(DemoConfig) == DemoConfig() and DemoConfig().out == "shards/demo"
    for key in ("pretrain_config", "deepspeed_config", "genre_task", "tags_task"):
        assert os.path.isfile(DemoConfig.repo_file(getattr(DemoConfig(), key))), key


def test_launch_help_and_bad_arguments():
    shown = run_launch("--help", timeout=120)
    assert shown.returncode == 0
    for text in ("--out", "--tracks", "--seconds", "--seed", "--steps", "--set", "Examples:"):
        assert text in shown.stdout, text
    bad = run_launch("--set", "nope=1", timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "unknown key 'nope'" in bad.stderr
    assert "tracks: must be >= 1" in run_launch("--tracks", "0", timeout=120).stderr


def _check_shards(shards: pathlib.Path, tracks: int) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["inputs"] == tracks == counts["accepted"] + counts["rejected"]
    assert counts["accepted"] == tracks and counts["segments"] >= tracks
    listed = manifest["train"] + manifest["val"]
    assert sum(s["samples"] for s in listed) == counts["segments"]
    for entry in listed:
        with tarfile.open(shards / entry["name"]) as tar:
            names = [m.name for m in tar.getmembers()]
            feats = [n for n in names if n.endswith(".feat.npy")]
            assert len(feats) == entry["samples"] and len(names) == 2 * len(feats)
            array = np.load(io.BytesIO(tar.extractfile(feats[0]).read()), allow_pickle=False)
            assert array.dtype == np.float16 and array.shape[1] == 324


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(400)
def test_launch_runs_the_whole_pipeline_then_reuses_it(tmp_path):
    import musicoder

    out = tmp_path / "demo"
    args = ["--out", str(out), *SMALL]
    for key, value in SMALL_SET.items():
        args += ["--set", f"{key}={value}"]
    first = run_launch(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    log = first.stdout
    for text in (
        "[1/7] corpus",
        "[3/7] shard",
        "[7/7] tags",
        "launch/shard.py --input",
        "launch/pretrain.py --config",
        "--resume auto",
        "launch/export.py",
        "launch/finetune.py --encoder",
        "step 1 loss",
        "MusiCoder demo summary",
        "open TensorBoard:",
        "/tensorboard --logdir",
    ):
        assert text in log, text

    _check_shards(out / "shards", tracks=18)
    assert (out / "run" / "checkpoints" / "latest").read_text().strip() == "global_step6"
    assert list((out / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    encoder = musicoder.load_encoder(str(out / "encoder"), device="cpu")
    vector = encoder.embed(np.random.default_rng(0).standard_normal(22050 * 3).astype("float32"))
    assert vector.shape == (2 * 128,) and bool(vector.isfinite().all())  # mean and std of 128
    table = {}
    for task, kind, keys in (
        ("genre", "genre", ["accuracy"]),
        ("tags", "tagging", ["roc_auc", "pr_auc"]),
    ):
        metrics = json.loads((out / task / "metrics.json").read_text())
        assert metrics["kind"] == kind and metrics["mode"] == "probe"
        for run in (
            metrics["test"],
            metrics["baselines"]["random_init"],
            metrics["baselines"]["handcrafted"],
        ):
            for key in keys:
                assert 0.0 <= run[key] <= 1.0, (task, key)
        table[task] = metrics
    assert results_table(table) in "\n".join(line[2:] for line in log.splitlines())

    second = run_launch(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    for text in (
        "reused the complete corpus",
        "is already complete",
        "skipped: ",
        "reused    corpus, shard, pretrain, export, genre, tags",
    ):
        assert text in second.stdout, text
    assert "launch/pretrain.py" not in second.stdout  # pre-training was not started again


def test_filtered_c_stderr_drops_decoder_notes_and_keeps_other_lines(capfd, caplog) -> None:
    caplog.set_level("INFO")
    with command.filtered_c_stderr():
        # Written straight to file descriptor 2, as a C library does.
        os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: part2_3_length\n")
        os.write(2, b"a real problem\n")
    err = capfd.readouterr().err
    assert "a real problem" in err
    assert "libmpg123" not in err
    assert "1 harmless libmpg123 decoder warnings not shown" in caplog.text
