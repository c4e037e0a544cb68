"""The demo's closing summary: what was made, the results table, and where everything is."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from musicoder.demo.command import display_path
from musicoder.demo.config import CONFIG_NAME, DemoConfig
from musicoder.demo.state import DemoState

MODELS = ("pretrained", "random_init", "handcrafted")
KIND_METRICS = {"genre": ("accuracy",), "tagging": ("roc_auc", "pr_auc")}


def results_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Test metrics of the encoder and both baselines, one row per task and metric.

    Args:
        metrics: Task name -> the content of its `metrics.json` (DESIGN §11).

    Returns:
        A plain-text table (header + rows); missing values show as ``-``.
    """
    header = f"{'task':<6} {'metric':<9}" + "".join(f" {m:>12}" for m in MODELS)
    lines = [header]
    for task, data in metrics.items():
        runs = {"pretrained": data.get("test", {}), **data.get("baselines", {})}
        for metric in KIND_METRICS.get(data.get("kind", ""), ()):
            cells = [runs.get(model, {}).get(metric) for model in MODELS]
            lines.append(
                f"{task:<6} {metric:<9}"
                + "".join(f" {c:>12.4f}" if isinstance(c, float) else f" {'-':>12}" for c in cells)
            )
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(
        f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])
    )


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def tensorboard_command(logdir: str) -> str:
    """How to open TensorBoard on ``logdir`` (this environment's executable when it has one)."""
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    return f"{display_path(exe) if os.path.exists(exe) else 'tensorboard'} --logdir {logdir}"


def format_summary(cfg: DemoConfig, state: DemoState) -> str:
    """A human-readable summary of a demo run: what was made, how fast, results and paths."""
    rows: list[tuple[str, str]] = []
    corpus, feats, manifest = state.corpus, state.features, state.manifest
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
    if manifest is not None:
        c = manifest["counts"]
        rows.append(
            (
                "shards",
                f"{c['segments']} samples, {c['hours']:.2f} h, {len(manifest['train'])} train + "
                f"{len(manifest['val'])} val shards; {c['accepted']} accepted, {c['rejected']} rejected",
            )
        )
    where: list[tuple[str, str]] = []
    if corpus is not None:
        where += [
            ("audio", display_path(os.path.join(cfg.corpus_dir, "audio"))),
            ("labels", f"{display_path(corpus.labels)} (path,split,label,tags)"),
        ]
    if manifest is not None:
        where.append(("shards", display_path(cfg.path("shards", "manifest.json"))))
    if state.checkpoint:
        where.append(
            (
                "ckpts",
                f"{display_path(cfg.path('run', 'checkpoints'))} (latest: {state.checkpoint})",
            )
        )
        where.append(("tb logs", display_path(cfg.path("run", "tensorboard"))))
    if state.exported:
        where.append(("encoder", display_path(cfg.path("encoder"))))
    for task in state.metrics:
        where.append(
            (
                f"{task}",
                f"{display_path(cfg.path(task, 'metrics.json'))}, "
                f"{display_path(cfg.path(task, 'tensorboard'))}",
            )
        )
    where.append(("config", display_path(cfg.path(CONFIG_NAME))))
    lines = ["MusiCoder demo summary", *(f"  {k:<9} {v}" for k, v in rows)]
    if state.metrics:
        lines += ["results (test split; linear probe on the frozen encoder vs. baselines)"]
        lines += [f"  {line}" for line in results_table(state.metrics).splitlines()]
    lines += ["where", *(f"  {k:<9} {v}" for k, v in where)]
    if state.checkpoint:
        lines.append(f"  open TensorBoard: {tensorboard_command(display_path(cfg.path()))}")
    stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in state.timings.items())
    lines.append(f"  stages    {stages}; total {sum(state.timings.values()):.1f} s")
    if state.reused:
        lines.append(f"  reused    {', '.join(state.reused)} (up to date, not redone)")
    return "\n".join(lines)
