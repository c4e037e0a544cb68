"""Downstream tasks: genre classification and auto-tagging by probing or fine-tuning an exported
encoder, with baselines, metrics and per-track embeddings (DESIGN §8).

The configs import eagerly (no torch); `run` and `embed_inputs` import torch and the model on
first use, so validating a task YAML stays cheap.
"""

from typing import Any

from musicoder.downstream.config import EmbedConfig, FinetuneConfig, TaskConfig, TrainConfig

__all__ = ["EmbedConfig", "FinetuneConfig", "TaskConfig", "TrainConfig", "embed_inputs", "run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from musicoder.downstream.runner import run

        return run
    if name == "embed_inputs":
        from musicoder.downstream.embed import embed_inputs

        return embed_inputs
    raise AttributeError(f"module 'musicoder.downstream' has no attribute {name!r}")
