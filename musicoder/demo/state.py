"""What the demo stages share: the state they fill in, the stage record and the stage error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from musicoder.demo.config import DemoConfig
from musicoder.demo_corpus import CorpusSummary


@dataclass
class FeatureReport:
    """What the `features` stage measured."""

    preset: str
    shape: tuple[int, ...]  # (tracks, frames, channels)
    dtype: str
    audio_seconds: float
    decode_seconds: float
    feature_seconds: float
    formats: dict[str, int]


@dataclass
class DemoState:
    """What the stages made so far; later stages read it.

    Attributes:
        corpus: The corpus summary (`corpus` stage).
        features: Decode and feature speed (`features` stage).
        manifest: The shard set's `manifest.json` (`shard` stage).
        checkpoint: The final checkpoint tag (`pretrain` stage), e.g. ``global_step300``.
        exported: The tag the encoder was exported from (`export` stage).
        metrics: Task name (``genre``, ``tags``) -> its `metrics.json` (probe stages).
        reused: Stages that found their output up to date and skipped the work.
        timings: Stage name -> wall seconds.
    """

    corpus: CorpusSummary | None = None
    features: FeatureReport | None = None
    manifest: dict[str, Any] | None = None
    checkpoint: str | None = None
    exported: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(cfg, state)`` does it and returns a one-line result."""

    name: str
    description: str
    run: Callable[[DemoConfig, DemoState], str]


class DemoStageError(RuntimeError):
    """A stage failed; the message names the stage and the cause in one line.

    Attributes:
        stage: The stage name.
        tail: The last output lines of the failing command (empty for in-process stages).
    """

    def __init__(self, stage: str, cause: BaseException) -> None:
        reason = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {reason}")
        self.stage = stage
        self.tail: list[str] = list(getattr(cause, "tail", []))
