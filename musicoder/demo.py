"""The `make demo` pipeline on the embedded default, as a list of stages.

Each stage is a function ``(DemoConfig, DemoState) -> str`` that does one step, records what it
made in the shared :class:`DemoState` and returns a one-line result. :func:`run_demo` runs them
in order, logs progress, and turns any failure into a :class:`DemoStageError` naming the stage,
so the demo stops with one clear line. Stages today:

1. ``corpus``: render the procedural demo corpus (or reuse a complete one) under ``<out>/corpus``.
2. ``features``: decode a sample of its tracks (every format) with
   :func:`musicoder.audio.load_audio` and extract the model input with
   :func:`musicoder.features.extract_features`, timed.

Later stages (shard with Ray, pre-train with DeepSpeed, export, probe) append to :data:`STAGES`
and read what earlier stages left in the state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from musicoder import storage
from musicoder.config import save_config
from musicoder.demo_corpus import SAMPLE_RATES, CorpusSummary, generate_corpus

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 4
CONFIG_NAME = "demo_config.yaml"


@dataclass
class DemoConfig:
    """Parameters of the demo run (`launch/demo.py` flags and `--set` keys)."""

    out: str = "shards/demo"  # everything the demo writes goes below this folder or URI
    tracks: int = 240  # demo corpus size, spread evenly over the 6 genres
    seconds: float = 30.0  # length of every track
    seed: int = 0
    sample_rate: int = 22050  # rate of the corpus files (features resample as their preset needs)
    workers: int = 0  # processes rendering the corpus; 0 = one per CPU core, at most 4
    feature_tracks: int = 12  # tracks decoded and featurized by the `features` stage
    preset: Literal["musicoder324", "logmel128"] = "musicoder324"

    def __post_init__(self) -> None:
        for key in ("tracks", "feature_tracks"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.seconds < 2.0:
            raise ValueError(
                f"seconds: must be >= 2 (shorter audio is rejected), got {self.seconds}"
            )
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate: must be one of {SAMPLE_RATES}, got {self.sample_rate}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0 (0 = auto), got {self.workers}")

    @property
    def corpus_dir(self) -> str:
        return storage.join(self.out, "corpus")


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
    """What the stages made so far; later stages read it."""

    corpus: CorpusSummary | None = None
    features: FeatureReport | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[DemoConfig, DemoState], str]


class DemoStageError(RuntimeError):
    """A stage failed; the message names the stage and the cause in one line."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        reason = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {reason}")
        self.stage = stage


def corpus_stage(cfg: DemoConfig, state: DemoState) -> str:
    workers = cfg.workers or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)
    state.corpus = corpus = generate_corpus(
        cfg.corpus_dir,
        num_tracks=cfg.tracks,
        seconds=cfg.seconds,
        seed=cfg.seed,
        sample_rate=cfg.sample_rate,
        workers=workers,
    )
    if corpus.reused:
        return f"reused the complete corpus in {cfg.corpus_dir} ({corpus.num_tracks} tracks)"
    speed = corpus.num_tracks * corpus.seconds / max(corpus.render_seconds, 1e-9)
    return (
        f"{corpus.num_tracks} tracks, {corpus.hours:.2f} h rendered at {speed:.0f}x realtime "
        f"with {workers} process(es) into {cfg.corpus_dir}"
    )


def features_stage(cfg: DemoConfig, state: DemoState) -> str:
    import torch  # here, not at import: the corpus stage and --help need no torch

    from musicoder.audio import load_audio
    from musicoder.features import extract_features, num_frames, preset_config

    assert state.corpus is not None, "the corpus stage runs first"
    files = state.corpus.files
    picks = sorted(
        {int(i) for i in np.linspace(0, len(files) - 1, min(cfg.feature_tracks, len(files)))}
    )
    rate = preset_config(cfg.preset).sample_rate
    started = time.perf_counter()
    waves = [load_audio(storage.join(cfg.corpus_dir, files[i]), sample_rate=rate) for i in picks]
    decode_seconds = time.perf_counter() - started
    length = min(len(w) for w in waves)
    batch = torch.stack([w[:length] for w in waves])  # (B, samples)
    extract_features(batch[:1, : rate * 2], cfg.preset)  # warm-up: builds the kernels once
    started = time.perf_counter()
    feats = extract_features(batch, cfg.preset)  # (B, frames, C)
    feature_seconds = time.perf_counter() - started
    if feats.shape[1] != num_frames(length, cfg.preset) or not torch.isfinite(feats).all():
        raise ValueError(f"features of shape {tuple(feats.shape)} are not finite or mis-sized")
    formats: dict[str, int] = {}
    for i in picks:
        ext = files[i].rsplit(".", 1)[-1]
        formats[ext] = formats.get(ext, 0) + 1
    state.features = report = FeatureReport(
        preset=cfg.preset,
        shape=tuple(feats.shape),
        dtype=str(feats.dtype).removeprefix("torch."),
        audio_seconds=len(picks) * length / rate,
        decode_seconds=decode_seconds,
        feature_seconds=feature_seconds,
        formats=formats,
    )
    return f"{report.preset} features {list(report.shape)} from {len(picks)} decoded tracks"


STAGES = (
    Stage("corpus", "render the procedural demo corpus (reused when complete)", corpus_stage),
    Stage("features", "decode tracks of every format and extract model features", features_stage),
)


def run_demo(cfg: DemoConfig, stages: tuple[Stage, ...] = STAGES) -> DemoState:
    """Run the demo stages in order.

    Args:
        cfg: demo parameters.
        stages: the stages to run (default: all of :data:`STAGES`).

    Returns:
        The state the stages filled in.

    Raises:
        DemoStageError: the first stage that failed, naming it and the cause.
    """
    state = DemoState()
    save_config(cfg, storage.join(cfg.out, CONFIG_NAME))
    for number, stage in enumerate(stages, start=1):
        log.info("[%d/%d] %s: %s", number, len(stages), stage.name, stage.description)
        started = time.perf_counter()
        try:
            result = stage.run(cfg, state)
        except Exception as e:  # any failure stops the demo, naming the stage
            raise DemoStageError(stage.name, e) from e
        state.timings[stage.name] = time.perf_counter() - started
        log.info(
            "[%d/%d] %s: done in %.1f s: %s",
            number,
            len(stages),
            stage.name,
            state.timings[stage.name],
            result,
        )
    return state


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(
        f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])
    )


def format_summary(cfg: DemoConfig, state: DemoState) -> str:
    """A human-readable summary of a demo run: what was made, how fast, and where it is."""
    rows: list[tuple[str, str]] = []
    corpus, feats = state.corpus, state.features
    if corpus is not None:
        made = "reused" if corpus.reused else f"rendered in {corpus.render_seconds:.1f} s"
        size = f"{corpus.num_tracks} tracks x {corpus.seconds:g} s = {corpus.hours:.2f} h"
        rows += [
            ("corpus", f"{size} at {corpus.sample_rate} Hz ({made})"),
            ("genres", _counts(corpus.genres)),
            ("tags", _counts(corpus.tags)),
            ("formats", _counts(corpus.formats)),
            ("splits", _counts(corpus.splits)),
        ]
    if feats is not None:
        decode = feats.audio_seconds / max(feats.decode_seconds, 1e-9)
        extract = feats.audio_seconds / max(feats.feature_seconds, 1e-9)
        audio = f"{feats.audio_seconds / 60:.1f} min of audio, {_threads()} thread(s)"
        shape = f"{list(feats.shape)} (tracks, frames, channels)"
        rows += [
            ("features", f"{feats.preset} {feats.dtype} {shape} from {_counts(feats.formats)}"),
            ("speed", f"decode {decode:.0f}x realtime, features {extract:.0f}x realtime ({audio})"),
        ]
    if corpus is not None:
        rows += [
            ("audio", storage.join(cfg.corpus_dir, "audio")),
            ("labels", f"{corpus.labels} (path,split,label,tags)"),
            ("summary", storage.join(cfg.corpus_dir, "corpus.json")),
        ]
    rows += [
        ("config", storage.join(cfg.out, CONFIG_NAME)),
        ("stages", ", ".join(f"{name} {sec:.1f} s" for name, sec in state.timings.items())),
    ]
    return "\n".join(["MusiCoder demo summary", *(f"  {k:<9} {v}" for k, v in rows)])


def _threads() -> int:
    import torch

    return torch.get_num_threads()
