"""Typed configs for downstream tasks: the task declaration, training knobs and the root configs.

Kept free of torch imports so that loading or validating a task YAML stays cheap
(`tests/test_config.py` loads every file in `configs/tasks/` against `TaskConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GENRE = "genre"
TAGGING = "tagging"
PROBE = "probe"
FINETUNE = "finetune"
SPLITS = ("train", "valid", "test")
Pooling = Literal["meanstd", "mean"]  # musicoder.model.pooling.POOLINGS (kept torch-free here)


@dataclass
class TaskConfig:
    """One downstream task, as declared in `configs/tasks/*.yaml`.

    Attributes:
        name: Task name, reported in `metrics.json`.
        kind: `genre` (single label, `label` column) or `tagging` (multi-label, `tags` column).
        source: Layout of `path`: `gtzan` (one folder per genre), `mtt`
            (MagnaTagATune `annotations_final.csv`) or `csv` (generic `path,split,label,tags`).
        path: The folder (gtzan) or the CSV file (mtt, csv); local path or URI.
        audio_root: mtt only: folder that holds the `mp3_path` entries (default: the CSV's folder).
        split_file: gtzan only: a text file of `relative/path split` lines, or a pattern with
            `{split}` naming one list file per split (e.g. `gtzan/{split}_filtered.txt`).
            Without it, a seeded stratified split is drawn.
        valid_fraction: Share of each class put in `valid` by the seeded split (also used to carve
            a validation set out of `train` when a source has none).
        test_fraction: Share of each class put in `test` by the seeded split.
        split_seed: Seed of the stratified split.
        top_k: tagging: keep only the k most frequent tags (MagnaTagATune: 50).
        classes: Fixed vocabulary; labels or tags outside it are skipped and counted.
        max_seconds: Decode at most this many seconds per track (None: whole track).
    """

    name: str = "task"
    kind: Literal["genre", "tagging"] = "genre"
    source: Literal["gtzan", "mtt", "csv"] = "csv"
    path: str = ""
    audio_root: str | None = None
    split_file: str | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    top_k: int | None = None
    classes: list[str] | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.source == "gtzan" and self.kind != GENRE:
            raise ValueError(f"task {self.name}: source gtzan needs kind genre, got {self.kind}")
        if self.source == "mtt" and self.kind != TAGGING:
            raise ValueError(f"task {self.name}: source mtt needs kind tagging, got {self.kind}")
        if not (0.0 <= self.valid_fraction < 1 and 0.0 <= self.test_fraction < 1):
            raise ValueError(f"task {self.name}: valid_fraction/test_fraction must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(f"task {self.name}: valid_fraction + test_fraction must be < 1")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"task {self.name}: top_k must be >= 1, got {self.top_k}")


@dataclass
class TrainConfig:
    """Training of the head (probe) or of the whole model (finetune).

    Attributes:
        lr: Learning rate of the head (and of the layer weights).
        lr_grid: Probe learning rates to try instead of `lr`: one head per rate from the same
            initial weights, the one with the best valid log-loss kept (and reported as
            `probe_lr`); empty = `lr` alone. The head's best rate depends on the task and the
            inputs (a head that is still improving at `max_epochs` favours inputs it fits
            faster), so the science yardstick sets `[1e-4, 3e-4, ..., 0.03]`.
        encoder_lr: Learning rate of the encoder in finetune mode (lower than `lr`).
        weight_decay: AdamW weight decay.
        batch_size: Chunks per optimizer step.
        max_epochs: Upper bound on epochs; early stopping on valid log-loss usually ends sooner.
        patience: Epochs without a better valid log-loss before stopping.
        chunk_seconds: Chunk length for long tracks; None = the model window (`max_frames`).
        pooling: How the head pools each layer over time: `meanstd` (mean and standard
            deviation, concatenated; see docs/decisions.md) or `mean`.
        head: `linear` (one linear layer) or `mlp` (the MARBLE protocol's probe: one hidden
            layer of `mlp_hidden` units, ReLU, dropout `mlp_dropout`).
        mlp_hidden: Hidden width of the `mlp` head.
        mlp_dropout: Dropout after the `mlp` head's hidden layer.
        layer: Probe only this pooled state (0 = input embedding, L = last layer, negative
            counts from the last); None = learned softmax weights over all of them.
        per_layer: Also train one head per pooled state and report its valid and test metrics
            (`metrics.json` `per_layer`), plus the effective rank of each state.
        seed: Seed of head initialisation, shuffling and the random-init baseline encoder.
    """

    lr: float = 1e-3
    lr_grid: list[float] = field(default_factory=list)
    encoder_lr: float = 1e-5
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20
    chunk_seconds: float | None = None
    pooling: Pooling = "meanstd"
    head: Literal["linear", "mlp"] = "linear"
    mlp_hidden: int = 512
    mlp_dropout: float = 0.2
    layer: int | None = None
    per_layer: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.encoder_lr < 0:
            raise ValueError("train.lr must be > 0 and train.encoder_lr >= 0")
        if any(lr <= 0 for lr in self.lr_grid):
            raise ValueError(f"train.lr_grid: every rate must be > 0, got {list(self.lr_grid)}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("train.batch_size, train.max_epochs and train.patience must be >= 1")
        if self.mlp_hidden < 1 or not 0.0 <= self.mlp_dropout < 1.0:
            raise ValueError("train.mlp_hidden must be >= 1 and train.mlp_dropout in [0, 1)")
        if self.chunk_seconds is not None and self.chunk_seconds <= 0:
            raise ValueError(f"train.chunk_seconds must be > 0, got {self.chunk_seconds}")


@dataclass
class FinetuneConfig:
    """Root config of `launch/finetune.py` (DESIGN §8, §11).

    Attributes:
        encoder: Export dir, or a `.safetensors` path with `config.json` beside it.
        task: The task (usually loaded from `--task configs/tasks/X.yaml`).
        mode: `probe` (frozen encoder) or `finetune` (whole model).
        baselines: Also run the random-init encoder and the handcrafted-feature baselines.
        output: Run folder: `metrics.json`, `predictions.csv`, `tensorboard/`.
        cache_dir: Feature cache, shared between runs and tasks.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
        train: Optimisation knobs.
    """

    encoder: str = ""
    task: TaskConfig = field(default_factory=TaskConfig)
    mode: Literal["probe", "finetune"] = "probe"
    baselines: bool = False
    output: str = "runs/finetune"
    cache_dir: str = ".cache/musicoder/features"
    device: str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EmbedConfig:
    """Root config of `launch/embed.py`.

    Attributes:
        encoder: Export dir, or a `.safetensors` path with `config.json` beside it.
        input: Audio folder, `s3://` prefix, one audio file, or a shard set (its folder or
            `manifest.json`).
        output: Folder for `embeddings.npy`, `index.csv` and `rejects.jsonl`.
        layer: Which hidden state to pool (-1: last layer, 0: input embedding).
        pooling: `meanstd` (mean and standard deviation over time: 2 x hidden values, as the
            probe uses) or `mean` (hidden values).
        max_seconds: Decode at most this many seconds per track (None: whole track).
        chunk_seconds: Chunk length for long tracks; None = the model window.
        batch_size: Chunks per encoder call.
        device: `auto`, `cpu`, `cuda`, ...
    """

    encoder: str = ""
    input: str = ""
    output: str = "runs/embed"
    layer: int = -1
    pooling: Pooling = "meanstd"
    max_seconds: float | None = None
    chunk_seconds: float | None = None
    batch_size: int = 16
    device: str = "auto"


def task_flags(task_file: str | None) -> dict[str, object]:
    """`task.<key>` flags from a task YAML, for `load_config(FinetuneConfig, flags=...)`.

    The file is validated as a whole `TaskConfig` first, so its errors name the file. As a CLI
    flag it wins over `--config` files and loses to `--set task.<key>=...`.
    """
    if not task_file:
        return {}
    from musicoder.config import load_config, to_dict

    return {f"task.{k}": v for k, v in to_dict(load_config(TaskConfig, [task_file])).items()}
