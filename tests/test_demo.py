"""Tests for musicoder/demo.py and launch/demo.py: stages, reuse, failure reporting, the CLI."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from musicoder.config import ConfigError, load_config
from musicoder.demo import STAGES, DemoConfig, DemoStageError, Stage, format_summary, run_demo
from musicoder.features import num_channels, num_frames

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = ["--set", "feature_tracks=2", "--set", "workers=1"]


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


def test_run_demo_makes_corpus_and_features_then_reuses(tmp_path):
    cfg = small_config(tmp_path / "demo")
    state = run_demo(cfg)
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
    again = run_demo(cfg, stages=STAGES[:1])
    assert again.corpus.reused and again.corpus.files == state.corpus.files
    assert "reused" in format_summary(cfg, again)


def test_failing_stage_stops_the_demo_and_is_named(tmp_path):
    ran = []

    def broken(cfg, state):
        raise ValueError("no space left\non device")

    stages = (
        Stage("broken", "fails", broken),
        Stage("after", "never runs", lambda c, s: ran.append(1)),
    )
    with pytest.raises(DemoStageError) as info:
        run_demo(small_config(tmp_path / "demo"), stages=stages)
    assert str(info.value) == "stage 'broken' failed: ValueError: no space left on device"
    assert info.value.stage == "broken" and ran == []


def test_features_stage_failure_names_the_file(tmp_path):
    cfg = small_config(tmp_path / "demo", tracks=6, feature_tracks=6)
    run_demo(cfg, stages=STAGES[:1])
    (tmp_path / "demo" / "corpus" / "audio" / "00005.wav").write_bytes(b"RIFF, but not audio")
    with pytest.raises(DemoStageError, match=r"^stage 'features' failed: Unreadable.*00005\.wav"):
        run_demo(cfg)


def test_config_validation():
    with pytest.raises(ConfigError, match="tracks: must be >= 1"):
        load_config(DemoConfig, overrides=["tracks=0"])
    with pytest.raises(ConfigError, match="preset"):
        load_config(DemoConfig, overrides=["preset=mfcc"])
    assert load_config(DemoConfig) == DemoConfig() and DemoConfig().out == "shards/demo"


def test_launch_help_and_bad_arguments():
    shown = run_launch("--help", timeout=120)
    assert shown.returncode == 0
    for text in ("--out", "--tracks", "--seconds", "--seed", "--set", "Examples:", "make demo"):
        assert text in shown.stdout, text
    bad = run_launch("--set", "nope=1", timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "unknown key 'nope'" in bad.stderr
    assert "tracks: must be >= 1" in run_launch("--tracks", "0", timeout=120).stderr


@pytest.mark.slow
def test_launch_runs_every_stage_and_reuses(tmp_path):
    args = ["--out", str(tmp_path / "demo"), "--tracks", "6", "--seconds", "3", *SMALL]
    first = run_launch(*args)
    assert first.returncode == 0, first.stderr
    for text in ("[1/2] corpus", "[2/2] features", "MusiCoder demo summary", "hiphop 1"):
        assert text in first.stdout, text
    second = run_launch(*args)
    assert second.returncode == 0 and "reused the complete corpus" in second.stdout
