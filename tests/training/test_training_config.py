"""Tests for musicoder/training/config.py: the shipped pretrain configs load and round-trip
through a checkpoint's JSON; typos and bad values are errors."""

from __future__ import annotations

import json

import pytest
from fixtures_training import REPO

from musicoder.config import ConfigError, load_config, to_dict
from musicoder.training.config import PretrainConfig


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs/pretrain").glob("*.yaml")), ids=lambda p: p.stem
)
def test_pretrain_configs_load(path):
    cfg = load_config(PretrainConfig, [str(path)])
    halves = 2 if cfg.loss.contrastive_weight else 1  # the model trains on crop halves
    assert cfg.model_config().max_frames >= cfg.data.max_frames // halves
    assert PretrainConfig.from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_config_typos_are_errors():
    with pytest.raises(ConfigError, match="lrr"):
        load_config(PretrainConfig, overrides=["train.lrr=1"])
    with pytest.raises(ConfigError, match="hiden"):
        load_config(PretrainConfig, overrides=["model.hiden=64"])
    with pytest.raises(ConfigError, match="output_dir"):
        load_config(PretrainConfig, overrides=["train.output_dir=s3://b/run"])


def test_window_pairs_need_the_contrastive_term():
    pairs = ["data.window_pairs=true", "data.max_frames=64", "model.max_frames=32"]
    with pytest.raises(ValueError, match="data.window_pairs.*contrastive_weight"):
        load_config(PretrainConfig, overrides=pairs)
    cfg = load_config(PretrainConfig, overrides=[*pairs, "loss.contrastive_weight=0.5"])
    assert cfg.data.window_pairs


def test_mixture_config_round_trips_and_a_resume_notices_other_data():
    from musicoder.training.train import data_change

    mix = ["data.sources=[{uri: a, weight: 2}, {uri: b, name: x}]"]
    cfg = load_config(PretrainConfig, overrides=mix)
    saved = json.loads(json.dumps(to_dict(cfg)))  # as a checkpoint's client state keeps it
    assert PretrainConfig.from_dict(saved) == cfg
    assert data_change(saved, cfg) is None
    other = load_config(PretrainConfig, overrides=["data.sources=[{uri: a, weight: 3}, {uri: b}]"])
    assert "resuming on other data" in data_change(saved, other)
    assert "data.manifest 'shards'" in data_change({"data": {"manifest": "shards"}}, cfg)
