"""Tests for musicoder/training/dsconfig.py: the pretrain YAML's knobs are injected into the
DeepSpeed JSON, which may not set them itself."""

from __future__ import annotations

import pytest
from fixtures_training import REPO

from musicoder.training.dsconfig import build_deepspeed_config, read_deepspeed_json

KNOBS = dict(lr=1e-3, warmup_steps=5, max_steps=100, micro_batch=4, grad_accum=2, precision="bf16")


def test_deepspeed_config_injects_yaml_knobs():
    base = read_deepspeed_json(str(REPO / "configs/deepspeed/zero2.json"))
    cfg = build_deepspeed_config(base, source="zero2.json", **KNOBS)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["optimizer"]["params"]["lr"] == 1e-3 and cfg["bf16"] == {"enabled": True}
    assert cfg["scheduler"]["params"]["total_num_steps"] == 100
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 5
    assert "lr" not in base["optimizer"]["params"]  # the input dict is not modified
    decay = build_deepspeed_config({"scheduler": {"type": "WarmupDecayLR"}}, source="x", **KNOBS)
    assert decay["scheduler"]["params"]["warmup_max_lr"] == 1e-3
    assert decay["optimizer"]["type"] == "AdamW"


@pytest.mark.parametrize(
    "bad",
    [
        {"optimizer": {"params": {"lr": 1}}},
        {"train_micro_batch_size_per_gpu": 8},
        {"bf16": {"enabled": False}},
        {"scheduler": {"params": {"total_num_steps": 5}}},
    ],
)
def test_deepspeed_json_may_not_set_injected_keys(bad):
    with pytest.raises(ValueError, match="my.json: sets .* pretrain YAML owns"):
        build_deepspeed_config(bad, source="my.json", **KNOBS)


def test_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="scheduler.type"):
        build_deepspeed_config({"scheduler": {"type": "OneCycle"}}, source="x", **KNOBS)


def test_cpu_accelerator_defaults_to_torch_adam_unless_the_json_decides() -> None:
    base = read_deepspeed_json(str(REPO / "configs/deepspeed/zero2.json"))
    on_cpu = build_deepspeed_config(base, source="zero2.json", on_cpu=True, **KNOBS)
    assert on_cpu["optimizer"]["params"]["torch_adam"] is True
    on_gpu = build_deepspeed_config(base, source="zero2.json", on_cpu=False, **KNOBS)
    assert "torch_adam" not in on_gpu["optimizer"]["params"]
    explicit = {"optimizer": {"type": "AdamW", "params": {"torch_adam": False}}}
    kept = build_deepspeed_config(explicit, source="x.json", on_cpu=True, **KNOBS)
    assert kept["optimizer"]["params"]["torch_adam"] is False
