"""One downstream run: task → cached features → probe / fine-tune → metrics (DESIGN §8, §11).

`run(cfg)` evaluates the exported encoder and, with `baselines`, the same head on a randomly
initialised encoder of the same config and on handcrafted features (mean and std over time of
the normalized input channels), so a user sees what pre-training buys. It writes, under
`cfg.output`: `metrics.json`, `predictions.csv` (test tracks), `skipped.csv` (every row or
track left out, with the reason), `config.yaml` and TensorBoard events in `tensorboard/<model>/`.
Features (`cache_dir/<preset>/`) and each encoder's pooled states (`cache_dir/states/`) are
cached, so probing the same encoder again with another head or seed runs no encoder pass.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from musicoder import storage
from musicoder.audio import AudioError
from musicoder.config import save_config
from musicoder.downstream.cache import FeatureCache
from musicoder.downstream.config import FINETUNE, GENRE, SPLITS, FinetuneConfig
from musicoder.downstream.metrics import compute_metrics, effective_rank
from musicoder.downstream.probe import (
    ChunkSet,
    FeatureChunks,
    FinetuneModel,
    History,
    ProbeHead,
    predict_finetune,
    predict_probe,
    train_finetune,
    train_probe,
)
from musicoder.downstream.sources import Skip, csv_text
from musicoder.downstream.tasks import TaskData, Track, load_task, warn_skips, write_skips
from musicoder.model.pooling import chunk_bounds
from musicoder.pretrained import Encoder, load_encoder, resolve_device

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.csv"

PRETRAINED, RANDOM_INIT, HANDCRAFTED = "pretrained", "random_init", "handcrafted"
STATES_VERSION = 1  # pooled-state cache entries (`cache_dir/states/`)
EVAL_SPLITS = ("valid", "test")  # scored after training: valid to choose by, test to report


def run(cfg: FinetuneConfig) -> dict:
    """Probes or fine-tunes an exported encoder on a task and reports test metrics.

    Args:
        cfg: The run (encoder, task, mode, baselines, output, training knobs).

    Returns:
        The dict written to `metrics.json`: task, kind, mode, `test` metrics of the encoder,
        `baselines` (model name -> test metrics; empty without `cfg.baselines`), track counts,
        skips, layer weights and early-stopping summary.

    Raises:
        ValueError: No encoder given, or the task cannot be parsed.
        FileNotFoundError: The encoder or the task source is missing.
    """
    if not cfg.encoder:
        raise ValueError("encoder: required (an export dir or a .safetensors path)")
    torch.manual_seed(cfg.train.seed)
    encoder = load_encoder(cfg.encoder, device=resolve_device(cfg.device))
    task = load_task(cfg.task, skip_list=storage.join(cfg.output, SKIPPED_FILE))
    cache = FeatureCache(
        cfg.cache_dir,
        preset=encoder.preset,
        max_seconds=cfg.task.max_seconds,
        device=encoder.device,
    )
    splits, unusable = _usable_tracks(task, cache)
    job = _Job(cfg, task, splits, cache, encoder.window(cfg.train.chunk_seconds))
    results = {PRETRAINED: job.evaluate(PRETRAINED, encoder)}
    if cfg.baselines:
        results[RANDOM_INIT] = job.evaluate(RANDOM_INIT, encoder.random_like(cfg.train.seed))
        results[HANDCRAFTED] = job.evaluate(HANDCRAFTED, encoder, handcrafted=True)
    main = results[PRETRAINED]
    metrics = {
        "task": task.name,
        "kind": task.kind,
        "mode": cfg.mode,
        "encoder": cfg.encoder,
        "classes": task.classes,
        "tracks": {s: len(splits[s]) for s in SPLITS},
        "skipped": len(task.skipped) + len(unusable),
        "test": main.metrics,
        "baselines": {name: r.metrics for name, r in results.items() if name != PRETRAINED},
        "layer_weights": main.layer_weights,
        "best_epoch": main.history.best_epoch,
        "valid_log_loss": main.history.best,
        "head": cfg.train.head,
        "models": {name: r.summary() for name, r in results.items()},
    }
    probs = {name: r.probs for name, r in results.items()}
    _write_outputs(cfg, task, splits["test"], probs, task.skipped + unusable, metrics)
    for name, r in results.items():
        job.log_test(name, r.metrics)
    job.close()
    return metrics


@dataclass
class _Result:
    metrics: dict  # test split
    valid: dict  # valid split: the numbers to choose by
    probs: np.ndarray  # (test tracks, classes)
    history: History
    layer_weights: list[float]
    probe_lr: float
    per_layer: list[dict] | None = None  # one head per pooled state: valid and test metrics
    effective_rank: list[float] | None = None  # of each pooled state over the train chunks

    def summary(self) -> dict:
        out = {
            "valid": self.valid,
            "test": self.metrics,
            "layer_weights": self.layer_weights,
            "best_epoch": self.history.best_epoch,
            "probe_lr": self.probe_lr,
        }
        if self.per_layer is not None:
            out["per_layer"] = self.per_layer
            out["effective_rank"] = self.effective_rank
        return out


class _Job:
    """Shared state of one run: tracks per split, feature cache, chunk window, TensorBoard."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        task: TaskData,
        splits: dict[str, list[Track]],
        cache: FeatureCache,
        window: int,
    ) -> None:
        self.cfg, self.task, self.splits, self.cache, self.window = cfg, task, splits, cache, window
        self.writers: dict = {}
        if not splits["valid"]:
            log.warning(
                "task %s: no valid tracks; early stopping watches the train tracks", task.name
            )
            self.splits = {**splits, "valid": splits["train"]}
        self.targets = {
            s: targets_of(tracks, task.kind, len(task.classes)) for s, tracks in self.splits.items()
        }

    def writer(self, name: str):
        if name not in self.writers and storage.is_local(self.cfg.output):
            from torch.utils.tensorboard import SummaryWriter  # lazy: pulls in tensorboard

            self.writers[name] = SummaryWriter(
                str(storage.local_path(storage.join(self.cfg.output, "tensorboard", name)))
            )
        return self.writers.get(name)

    def on_epoch(self, name: str, stage: str) -> Callable[[int, float, float], None]:
        def record(epoch: int, train_loss: float, valid_log_loss: float) -> None:
            if writer := self.writer(name):
                writer.add_scalar(f"{stage}/train_loss", train_loss, epoch)
                writer.add_scalar(f"{stage}/valid_log_loss", valid_log_loss, epoch)

        return record

    def log_test(self, name: str, metrics: dict) -> None:
        if writer := self.writer(name):
            for key, value in metrics.items():
                if isinstance(value, float):
                    writer.add_scalar(f"test/{key}", value, 0)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def tracks_features(self, tracks: Sequence[Track]):
        return (self.cache.get(t.uri) for t in tracks)

    def chunk_set(self, split: str, encoder: Encoder, handcrafted: bool) -> ChunkSet:
        tracks = self.splits[split]
        if handcrafted:
            states = [
                handcrafted_states(encoder.normalize(f), self.window)
                for f in self.tracks_features(tracks)
            ]
        else:
            states = self.encoder_states(split, encoder)
        counts = torch.tensor([len(s) for s in states])
        return ChunkSet(
            torch.cat(states),
            torch.arange(len(states)).repeat_interleave(counts),
            self.targets[split],
        )

    def encoder_states(self, split: str, encoder: Encoder) -> list[torch.Tensor]:
        """Per-track `(n_chunks, L + 1, D)` pooled states of a split, from the state cache
        when this encoder (weights and normalization), window, pooling and these tracks'
        features were seen before (other probe heads and seeds reuse them), else computed."""
        tracks = self.splits[split]
        entry = storage.join(self.cfg.cache_dir, "states", f"{self.states_key(split, encoder)}.npz")
        if storage.exists(entry):
            try:
                with np.load(io.BytesIO(storage.read_bytes(entry)), allow_pickle=False) as f:
                    flat, counts = torch.from_numpy(f["states"]), f["counts"].tolist()
                if len(counts) == len(tracks):
                    return list(flat.split(counts))
            except (ValueError, OSError, KeyError) as err:
                log.warning("%s: unreadable state cache entry (%s); recomputing", entry, err)
        per_track = encoder.iter_pooled_states(
            self.tracks_features(tracks),
            window=self.window,
            batch_size=self.cfg.train.batch_size,
            pooling=self.cfg.train.pooling,
        )
        states = list(tqdm(per_track, total=len(tracks), desc=f"{split} states", leave=False))
        buffer = io.BytesIO()
        np.savez(
            buffer, states=torch.cat(states).numpy(), counts=np.array([len(s) for s in states])
        )
        storage.write_bytes(entry, buffer.getvalue())
        return states

    def states_key(self, split: str, encoder: Encoder) -> str:
        """What determines a split's pooled states: weights, normalization, window, pooling and
        each track's feature cache entry (audio identity and feature settings)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(encoder.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        for tensor in (encoder.mean, encoder.std):
            digest.update(tensor.cpu().numpy().tobytes())
        settings = {
            "version": STATES_VERSION,
            "model": encoder.model_config.to_dict(),
            "window": self.window,
            "pooling": self.cfg.train.pooling,
            "tracks": [self.cache.entry_uri(t.uri) for t in self.splits[split]],
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()

    def feature_chunks(self, split: str) -> FeatureChunks:
        tracks = self.splits[split]
        bounds = [
            (i, s, e)
            for i, f in enumerate(self.tracks_features(tracks))
            for s, e in chunk_bounds(len(f), self.window)
        ]
        return FeatureChunks(bounds, lambda i: self.cache.get(tracks[i].uri), self.targets[split])

    def head(
        self, sets: dict[str, ChunkSet], device: torch.device, layer: int | None = None
    ) -> ProbeHead:
        """A fresh head (the same initial weights for every model) fitted to train inputs."""
        train_cfg, inputs = self.cfg.train, sets["train"].inputs
        _, num_states, dim = inputs.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            head = ProbeHead(
                num_states,
                dim,
                len(self.task.classes),
                hidden=train_cfg.mlp_hidden if train_cfg.head == "mlp" else None,
                dropout=train_cfg.mlp_dropout,
                layer=layer,
            )
        return head.to(device).fit_standardization(inputs.to(device))

    def fit_head(
        self,
        sets: dict[str, ChunkSet],
        device: torch.device,
        layer: int | None,
        name: str | None = None,
    ) -> tuple[ProbeHead, History, float]:
        """A probe head trained at each rate of `train.lr_grid` (else `train.lr`) from the same
        initial weights; returns the one with the best valid log-loss, its history and rate.
        With `name`, each rate's epochs go to TensorBoard (`probe` stage, or `probe_lr<rate>`)."""
        train_cfg = self.cfg.train
        rates = list(train_cfg.lr_grid) or [train_cfg.lr]
        best = None
        for lr in rates:
            head = self.head(sets, device, layer)
            stage = "probe" if len(rates) == 1 else f"probe_lr{lr:g}"
            history = train_probe(
                head,
                sets["train"],
                sets["valid"],
                self.task.kind,
                replace(train_cfg, lr=lr),
                on_epoch=self.on_epoch(name, stage) if name else None,
            )
            if best is None or history.best < best[1].best:
                best = (head, history, lr)
        return best

    def split_metrics(self, probs: dict[str, np.ndarray]) -> dict[str, dict]:
        """Metrics of track-level probabilities per split (`EVAL_SPLITS`)."""
        return {
            split: compute_metrics(self.task.kind, p, self.targets[split].numpy())
            for split, p in probs.items()
        }

    def evaluate(self, name: str, encoder: Encoder, *, handcrafted: bool = False) -> _Result:
        log.info("evaluating %s on task %s", name, self.task.name)
        kind, train_cfg = self.task.kind, self.cfg.train
        sets = {s: self.chunk_set(s, encoder, handcrafted) for s in SPLITS}
        layer = None if handcrafted else train_cfg.layer
        head, history, lr = self.fit_head(sets, encoder.device, layer, name)
        probs = {s: predict_probe(head, sets[s], kind) for s in EVAL_SPLITS}
        if self.cfg.mode == FINETUNE and not handcrafted:
            model = FinetuneModel(copy.deepcopy(encoder.model), head, pooling=train_cfg.pooling).to(
                encoder.device
            )
            chunks = {s: self.feature_chunks(s) for s in SPLITS}
            history = train_finetune(
                model,
                chunks["train"],
                chunks["valid"],
                kind,
                train_cfg,
                encoder.normalize,
                on_epoch=self.on_epoch(name, "finetune"),
            )
            probs = {
                s: predict_finetune(model, chunks[s], kind, encoder.normalize, train_cfg.batch_size)
                for s in EVAL_SPLITS
            }
        metrics = self.split_metrics(probs)
        test = metrics["test"]
        log.info("%s test: %s", name, {k: v for k, v in test.items() if isinstance(v, float)})
        result = _Result(test, metrics["valid"], probs["test"], history, head.layer_weights(), lr)
        if train_cfg.per_layer:
            result.per_layer, result.effective_rank = self.layer_scores(sets, encoder.device)
        return result

    def layer_scores(
        self, sets: dict[str, ChunkSet], device: torch.device
    ) -> tuple[list[dict], list[float]]:
        """One probe head per pooled state: its valid and test metrics; and each state's
        effective rank over the train chunks (how many directions the states really use)."""
        scores, ranks = [], []
        for k in range(sets["train"].inputs.shape[1]):
            head, _, _ = self.fit_head(sets, device, k)
            probs = {s: predict_probe(head, sets[s], self.task.kind) for s in EVAL_SPLITS}
            scores.append({"layer": k, **self.split_metrics(probs)})
            ranks.append(effective_rank(sets["train"].inputs[:, k].numpy()))
        return scores, ranks


def handcrafted_states(features: torch.Tensor, window: int) -> torch.Tensor:
    """Handcrafted baseline input: mean and std over time per chunk, `(n_chunks, 1, 2C)`."""
    rows = [
        torch.cat([features[s:e].mean(0), features[s:e].std(0, correction=0)])
        for s, e in chunk_bounds(len(features), window)
    ]
    return torch.stack(rows)[:, None].float().cpu()


def targets_of(tracks: Sequence[Track], kind: str, num_classes: int) -> torch.Tensor:
    """Class indices `(N,)` (genre) or a 0/1 matrix `(N, num_classes)` (tagging)."""
    if kind == GENRE:
        return torch.tensor([t.targets[0] for t in tracks], dtype=torch.long)
    out = torch.zeros(len(tracks), num_classes)
    for i, t in enumerate(tracks):
        out[i, list(t.targets)] = 1.0
    return out


def _usable_tracks(
    task: TaskData, cache: FeatureCache
) -> tuple[dict[str, list[Track]], list[Skip]]:
    """Decodes and featurizes every track once (into the cache); unusable audio becomes a Skip."""
    ok, unusable = [], []
    for track in tqdm(task.tracks, desc="features", unit="track"):
        try:
            cache.get(track.uri)
            ok.append(track)
        except (AudioError, OSError) as err:
            unusable.append(Skip.from_error(track.uri, err))
    warn_skips(f"task {task.name} audio", unusable)
    log.info(
        "features: %d cached, %d computed, %d unusable", cache.hits, cache.misses, len(unusable)
    )
    splits = {s: [t for t in ok if t.split == s] for s in SPLITS}
    for split in ("train", "test"):
        if not splits[split]:
            raise ValueError(
                f"task {task.name}: no usable {split} tracks (see skipped.csv / the warnings)"
            )
    return splits, unusable


def _write_outputs(
    cfg: FinetuneConfig,
    task: TaskData,
    test: list[Track],
    probs: dict[str, np.ndarray],
    skipped: list[Skip],
    metrics: dict,
) -> None:
    """`predictions.csv` (the encoder) and `predictions_<baseline>.csv`: one row per test track."""
    out = cfg.output
    save_config(cfg, storage.join(out, "config.yaml"))
    write_skips(storage.join(out, SKIPPED_FILE), skipped)
    targets = [";".join(task.classes[i] for i in t.targets) for t in test]
    for name, model_probs in probs.items():
        rows = [
            (t.uri, target, *(f"{p:.6f}" for p in row))
            for t, target, row in zip(test, targets, model_probs, strict=True)
        ]
        filename = "predictions.csv" if name == PRETRAINED else f"predictions_{name}.csv"
        storage.write_text(
            storage.join(out, filename), csv_text(["path", "target", *task.classes], rows)
        )
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    log.info("wrote %s", storage.join(out, "metrics.json"))
