"""Tests for musicoder/model/config.py and flops.count_parameters: variants, YAML mirror, counts."""

from __future__ import annotations

import pathlib

import pytest
import torch
import yaml

from musicoder.model import VARIANTS, MusiCoder, MusiCoderConfig, count_parameters, variant_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs" / "model"
DESIGN_PARAMS = {"base": 85e6, "large": 300e6, "xl": 1.5e9}  # DESIGN §6 table


def count_instantiated(config: MusiCoderConfig, device: str = "cpu") -> int:
    with torch.device(device):
        return sum(p.numel() for p in MusiCoder(config).parameters())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_yaml_mirrors_variant(name):
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert MusiCoderConfig(**data) == variant_config(name)


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_parameter_formula_matches_real_model(name):
    config = variant_config(name)
    assert count_instantiated(config) == count_parameters(config)


@pytest.mark.parametrize("name", ["large", "xl"])
def test_parameter_formula_matches_meta_model(name):
    config = variant_config(name)  # meta device: no memory, no init cost
    assert count_instantiated(config, "meta") == count_parameters(config)


@pytest.mark.parametrize("name", list(DESIGN_PARAMS))
def test_parameter_counts_match_design_table(name):
    assert abs(count_parameters(variant_config(name)) / DESIGN_PARAMS[name] - 1) <= 0.05


def test_encoder_only_count_excludes_head():
    config = variant_config("tiny")
    model = MusiCoder(config)
    assert count_parameters(config, include_head=False) == sum(
        p.numel() for p in model.encoder.parameters()
    )


def test_variant_overrides_and_unknown_names():
    assert variant_config("tiny", input_dim=128).input_dim == 128
    with pytest.raises(ValueError, match="unknown name 'huge'"):
        variant_config("huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['layers'\]"):
        variant_config("tiny", layers=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden": 100, "heads": 3}, "model.hidden: 100 is not divisible by model.heads=3"),
        ({"num_layers": 0}, "model.num_layers: must be a positive integer"),
        ({"dropout": 1.0}, "model.dropout: must be in"),
        ({"max_frames": 2.5}, "model.max_frames: must be a positive integer"),
        ({"position_scale": -0.5}, "model.position_scale: must be finite and >= 0"),
        ({"position_scale": float("nan")}, "model.position_scale: must be finite and >= 0"),
    ],
)
def test_invalid_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MusiCoderConfig(**kwargs)
