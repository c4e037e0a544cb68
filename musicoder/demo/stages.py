"""The demo's stages, in order: corpus → features → shard → pretrain → export → genre → tags.

`corpus` and `features` run in-process. The others run the real command-line tools as child
processes (:mod:`musicoder.demo.command`), so the demo exercises and prints exactly the
commands of the README. Each stage skips work that is already done and up to date:

- `shard`: always runs `launch/shard.py`, which leaves a complete output untouched (it says so)
  and resumes a partial one; ``--overwrite`` replaces shards of an earlier, different corpus.
- `pretrain`: skipped when ``run/checkpoints/latest`` already names step ``steps`` (or later);
  otherwise `--resume auto` continues from it. A run older than the shards is started over.
- `export`: skipped when the encoder is newer than ``run/checkpoints/latest``.
- `genre`, `tags`: skipped when ``metrics.json`` is newer than the encoder and the labels;
  otherwise the probe reuses the feature cache under ``<out>/cache``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import numpy as np

from musicoder import storage
from musicoder.demo.command import (
    display_path,
    filtered_c_stderr,
    python_command,
    run_command,
)
from musicoder.demo.config import DemoConfig
from musicoder.demo.state import DemoState, FeatureReport, Stage
from musicoder.demo_corpus import LABELS_NAME, generate_corpus

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 4
DEFAULT_PRESET = "musicoder324"
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.safetensors"
METRICS = "metrics.json"
TASKS = {"genre": "genre_task", "tags": "tags_task"}  # stage/output name -> DemoConfig key


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
    where = display_path(cfg.corpus_dir)
    if corpus.reused:
        state.reused.append("corpus")
        return f"reused the complete corpus in {where} ({corpus.num_tracks} tracks)"
    speed = corpus.num_tracks * corpus.seconds / max(corpus.render_seconds, 1e-9)
    return (
        f"{corpus.num_tracks} tracks, {corpus.hours:.2f} h rendered at {speed:.0f}x realtime "
        f"with {workers} process(es) into {where}"
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
    with filtered_c_stderr():
        waves = [
            load_audio(storage.join(cfg.corpus_dir, files[i]), sample_rate=rate) for i in picks
        ]
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


def shard_stage(cfg: DemoConfig, state: DemoState) -> str:
    shards = cfg.path("shards")
    argv = python_command(
        DemoConfig.repo_file("launch/shard.py"),
        *("--input", display_path(os.path.join(cfg.corpus_dir, "audio"))),
        *("--output", display_path(shards)),
        *("--preset", cfg.preset, "--segment-seconds", f"{cfg.segment_seconds:g}"),
        *("--shard-size", f"{cfg.shard_mb:g}", "--val-fraction", f"{cfg.val_fraction:g}"),
        *("--seed", str(cfg.seed), "--overwrite"),
    )
    # The embedded default: a local Ray started by the job, even if RAY_ADDRESS names a cluster
    # (whose nodes could not see these local paths).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tail = run_command(argv, env=env)
    if any("already complete" in line for line in tail):
        state.reused.append("shard")
    state.manifest = manifest = storage.read_json(os.path.join(shards, MANIFEST))
    counts = manifest["counts"]
    return (
        f"{counts['segments']} samples, {counts['hours']:.2f} h in {len(manifest['train'])} train "
        f"+ {len(manifest['val'])} val shards ({counts['rejected']} rejected): "
        f"{display_path(os.path.join(shards, MANIFEST))}"
    )


def _latest(ckpt_dir: str) -> tuple[str | None, int]:
    """The tag that `latest` names and its step (None, -1 without a complete checkpoint)."""
    from musicoder.training.checkpoint import TAG_PATTERN, latest_tag

    tag = latest_tag(ckpt_dir)
    return tag, int(TAG_PATTERN.match(tag).group(1)) if tag else -1


def _mtime(path: str) -> float:
    return os.path.getmtime(path) if os.path.exists(path) else -1.0


def pretrain_stage(cfg: DemoConfig, state: DemoState) -> str:
    from musicoder.training.checkpoint import CHECKPOINTS_DIR, LATEST

    run_dir, shards = cfg.path("run"), cfg.path("shards")
    ckpt_dir = os.path.join(run_dir, CHECKPOINTS_DIR)
    latest_file = os.path.join(ckpt_dir, LATEST)
    if 0 <= _mtime(latest_file) < _mtime(os.path.join(shards, MANIFEST)):
        log.warning("  %s predates the shards; starting the run over", display_path(run_dir))
        shutil.rmtree(run_dir)  # trained on an earlier shard set: its state does not apply
    tag, step = _latest(ckpt_dir)
    if step >= cfg.steps:
        state.checkpoint = tag
        state.reused.append("pretrain")
        return f"skipped: {display_path(latest_file)} names {tag} (train.max_steps {cfg.steps})"
    overrides = [
        f"data.manifest={display_path(shards)}",
        f"train.output_dir={display_path(run_dir)}",
        f"train.max_steps={cfg.steps}",
        f"train.micro_batch={cfg.batch}",
        f"data.max_frames={cfg.crop_frames}",
    ]
    if cfg.preset != DEFAULT_PRESET:
        from musicoder.features import num_channels

        overrides += [f"data.preset={cfg.preset}", f"model.input_dim={num_channels(cfg.preset)}"]
    argv = python_command(
        DemoConfig.repo_file("launch/pretrain.py"),
        *("--config", display_path(DemoConfig.repo_file(cfg.pretrain_config))),
        *("--deepspeed", display_path(DemoConfig.repo_file(cfg.deepspeed_config))),
        *(arg for kv in overrides for arg in ("--set", kv)),
        *("--resume", "auto"),
    )
    log.info(
        "  (the first DeepSpeed run on a machine compiles one op, about a minute on 2 CPU cores "
        "without output, into ~/.cache/torch_extensions)"
    )
    run_command(argv)
    state.checkpoint, step = _latest(ckpt_dir)
    if step < cfg.steps:
        raise RuntimeError(f"{latest_file}: names {state.checkpoint}, expected step {cfg.steps}")
    return f"checkpoint {state.checkpoint} in {display_path(ckpt_dir)}"


def export_stage(cfg: DemoConfig, state: DemoState) -> str:
    from musicoder.training.checkpoint import CHECKPOINTS_DIR, LATEST

    run_dir, encoder = cfg.path("run"), cfg.path("encoder")
    latest_file = os.path.join(run_dir, CHECKPOINTS_DIR, LATEST)
    weights = os.path.join(encoder, ENCODER_FILE)
    if _mtime(weights) > _mtime(latest_file) and os.path.isfile(
        os.path.join(encoder, "config.json")
    ):
        state.exported = state.checkpoint
        state.reused.append("export")
        return f"skipped: {display_path(weights)} is newer than {display_path(latest_file)}"
    run_command(
        python_command(
            DemoConfig.repo_file("launch/export.py"), display_path(run_dir), display_path(encoder)
        )
    )
    state.exported = state.checkpoint
    return f"{display_path(weights)} from {state.checkpoint}"


def probe_stage(name: str) -> Stage:
    """The stage that probes the encoder on task ``name`` (``genre`` or ``tags``) with baselines."""

    def run(cfg: DemoConfig, state: DemoState) -> str:
        out, encoder = cfg.path(name), cfg.path("encoder")
        metrics_file = os.path.join(out, METRICS)
        labels = os.path.join(cfg.corpus_dir, LABELS_NAME)
        newest_input = max(_mtime(os.path.join(encoder, ENCODER_FILE)), _mtime(labels))
        if _mtime(metrics_file) > newest_input:
            state.reused.append(name)
            result = f"skipped: {display_path(metrics_file)} is newer than the encoder"
        else:
            run_command(
                python_command(
                    DemoConfig.repo_file("launch/finetune.py"),
                    *("--encoder", display_path(encoder)),
                    *("--task", display_path(DemoConfig.repo_file(getattr(cfg, TASKS[name])))),
                    *("--mode", "probe", "--baselines", "--output", display_path(out)),
                    *("--set", f"task.path={display_path(labels)}"),
                    *("--set", f"cache_dir={display_path(cfg.path('cache'))}"),
                )
            )
            result = f"wrote {display_path(metrics_file)}"
        state.metrics[name] = storage.read_json(metrics_file)
        return result

    kind = "genre classification" if name == "genre" else "auto-tagging"
    return Stage(name, f"probe {kind} with the encoder and both baselines", run)


STAGES = (
    Stage("corpus", "render the procedural demo corpus (reused when complete)", corpus_stage),
    Stage("features", "decode tracks of every format and extract model features", features_stage),
    Stage("shard", "shard the corpus into WebDataset tars with Ray", shard_stage),
    Stage("pretrain", "pre-train the tiny model with DeepSpeed (one process)", pretrain_stage),
    Stage("export", "export the encoder as safetensors", export_stage),
    probe_stage("genre"),
    probe_stage("tags"),
)
