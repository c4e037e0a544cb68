"""Probe and fine-tune heads and their training with early stopping (DESIGN §8).

Probe: the encoder is frozen; each layer output is pooled over time (mean and standard deviation
by default, `train.pooling`), and a head learns softmax weights over the pooled layers (or uses
one chosen layer) and applies one linear layer (`train.head: linear`) or the MARBLE protocol's
MLP (`mlp`: one hidden layer of 512, dropout). The head sees per-chunk, per-layer pooled states
`(N, L+1, D)` computed once, so training the probe costs no encoder passes at all. Inputs are
standardized with train-set statistics (a fixed affine map, so a linear head stays a linear
probe; it lets one learning rate suit every encoder).

Fine-tune: the probe is trained first and then the whole model is trained from it, the encoder
with a lower learning rate (linear-probe-then-fine-tune keeps a random head from wrecking the
pretrained features in the first steps). Both stop early on the validation log-loss, computed
per track after averaging chunk predictions, and restore the best epoch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musicoder.downstream.config import GENRE, TrainConfig
from musicoder.downstream.metrics import aggregate_tracks, mean_log_loss
from musicoder.model.pooling import DEFAULT_POOLING, pad_chunks, pool_layers
from musicoder.model import MusiCoderEncoder

log = logging.getLogger(__name__)

# Standardizing pooled states is not feature CMVN (`STD_FLOOR`, 0.1, sized for feature
# channels): a pooled hidden unit can vary across clips by far less than 0.1 and still carry
# the signal, so this floor only guards the division (the yardstick in BENCHMARKS.md ran with it).
STATE_STD_EPS = 1e-6

MIN_IMPROVEMENT = 1e-5  # a smaller drop of the valid log-loss does not reset patience


@dataclass
class ChunkSet:
    """Per-chunk inputs of one split, with the track each chunk came from.

    Attributes:
        inputs: `(N, K, D)` pooled states per chunk (K = layers + 1, or 1 for handcrafted).
        track: `(N,)` long: index of the chunk's track in `targets`.
        targets: `(num_tracks,)` long class indices (genre) or `(num_tracks, classes)` 0/1 float.
    """

    inputs: torch.Tensor
    track: torch.Tensor
    targets: torch.Tensor

    @property
    def num_tracks(self) -> int:
        return self.targets.shape[0]


@dataclass
class History:
    """What early stopping saw: per-epoch train loss and valid log-loss, and the best epoch."""

    train_loss: list[float] = field(default_factory=list)
    valid_log_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1

    @property
    def best(self) -> float:
        return self.valid_log_loss[self.best_epoch]


class ProbeHead(nn.Module):
    """Pooled states of K layers → class logits: `(B, K, D)` → `(B, classes)`.

    Inputs are standardized per state with train statistics, then combined by learned softmax
    weights over the K states (or one chosen state), then mapped to logits by `linear`: one
    linear layer, or `mlp`: the MARBLE protocol's head, one hidden layer (ReLU, dropout).
    Every model (encoder, random init, handcrafted) gets the same head.

    Args:
        num_states: K, pooled states per chunk (layers + 1; 1 for handcrafted features).
        dim: D, width of a pooled state.
        num_classes: Output logits.
        hidden: Width of the MLP's hidden layer; None = linear head.
        dropout: Dropout after the MLP's hidden layer (ignored for a linear head).
        layer: Use only this state (negative counts from the last); None = learned weighting.
    """

    def __init__(
        self,
        num_states: int,
        dim: int,
        num_classes: int,
        *,
        hidden: int | None = None,
        dropout: float = 0.0,
        layer: int | None = None,
    ) -> None:
        super().__init__()
        if layer is not None and not -num_states <= layer < num_states:
            raise ValueError(f"train.layer: {layer} is outside the {num_states} pooled states")
        self.layer = None if layer is None else layer % num_states
        self.layer_logits = nn.Parameter(torch.zeros(num_states))
        if hidden is None:
            self.classifier = nn.Linear(dim, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        self.register_buffer("mean", torch.zeros(num_states, dim))
        self.register_buffer("std", torch.ones(num_states, dim))

    def fit_standardization(self, inputs: torch.Tensor) -> ProbeHead:
        """Sets the input standardization from train inputs `(N, K, D)`."""
        self.mean.copy_(inputs.mean(dim=0))
        self.std.copy_(
            inputs.std(dim=0, correction=0).clamp(min=STATE_STD_EPS) if len(inputs) > 1 else 1.0
        )
        return self

    def weights(self) -> torch.Tensor:
        """`(K,)` weight of each pooled state: softmax of the logits, or one-hot on `layer`."""
        if self.layer is None:
            return torch.softmax(self.layer_logits, dim=0)
        return F.one_hot(torch.tensor(self.layer), len(self.layer_logits)).to(self.mean.dtype)

    def layer_weights(self) -> list[float]:
        """The weight of each pooled state, as plain floats."""
        return self.weights().detach().cpu().tolist()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = (pooled - self.mean) / self.std  # (B, K, D)
        return self.classifier(torch.einsum("bkd,k->bd", x, self.weights().to(x.device)))


class FinetuneModel(nn.Module):
    """Encoder + probe head: `(B, T, C)` features, `(B, T)` valid mask → `(B, classes)` logits."""

    def __init__(
        self, encoder: MusiCoderEncoder, head: ProbeHead, *, pooling: str = DEFAULT_POOLING
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.pooling = pooling

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.head(pool_layers(self.encoder, features, valid, pooling=self.pooling))


def probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Softmax (genre) or sigmoid (tagging) of `(B, classes)` logits."""
    return torch.softmax(logits, dim=-1) if kind == GENRE else torch.sigmoid(logits)


def loss_fn(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (genre, long targets) or binary cross-entropy (tagging, 0/1 targets)."""
    if kind == GENRE:
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def early_stopping(
    train_epoch: Callable[[int], float],
    valid_log_loss: Callable[[], float],
    module: nn.Module,
    cfg: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> History:
    """Runs epochs until the valid log-loss stops improving, then restores the best state.

    Args:
        train_epoch: Trains one epoch (argument: epoch index); returns the mean train loss.
        valid_log_loss: Evaluates the current model; returns the valid log-loss (lower = better).
        module: Whose `state_dict` is kept at the best epoch and restored at the end.
        cfg: `max_epochs` and `patience`.
        on_epoch: Called with (epoch, train loss, valid log-loss), e.g. for TensorBoard.
    """
    history, best_state, waited = History(), None, 0
    for epoch in range(cfg.max_epochs):
        history.train_loss.append(train_epoch(epoch))
        history.valid_log_loss.append(valid_log_loss())
        if on_epoch:
            on_epoch(epoch, history.train_loss[-1], history.valid_log_loss[-1])
        if history.best_epoch < 0 or history.valid_log_loss[-1] < history.best - MIN_IMPROVEMENT:
            history.best_epoch, best_state, waited = epoch, copy.deepcopy(module.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    module.load_state_dict(best_state)
    log.info(
        "early stopping: best epoch %d of %d, valid log-loss %.4f",
        history.best_epoch,
        len(history.train_loss),
        history.best,
    )
    return history


def _train_epoch(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    count: int,
    generator: torch.Generator,
    cfg: TrainConfig,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """One epoch over `count` items in a seeded shuffled order, `cfg.batch_size` at a time:
    an optimizer step on each `batch_loss(indices)`; returns the mean loss."""
    module.train()
    losses = []
    for index in torch.randperm(count, generator=generator).split(cfg.batch_size):
        loss = batch_loss(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def predict_probe(
    head: ProbeHead, data: ChunkSet, kind: str, *, batch_size: int = 4096
) -> np.ndarray:
    """Track-level probabilities `(num_tracks, classes)` of a probe head (chunk means)."""
    head.eval()
    device = head.mean.device
    parts = [
        probabilities(kind, head(data.inputs[i : i + batch_size].to(device))).cpu()
        for i in range(0, len(data.inputs), batch_size)
    ]
    return aggregate_tracks(torch.cat(parts).numpy(), data.track.numpy(), data.num_tracks)


def train_probe(
    head: ProbeHead, train: ChunkSet, valid: ChunkSet, kind: str, cfg: TrainConfig, **kwargs
) -> History:
    """Trains a probe head (AdamW, shuffled chunk batches) with early stopping on `valid`."""
    device = head.mean.device
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    chunk_targets = train.targets[train.track]

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        return loss_fn(kind, head(train.inputs[index].to(device)), chunk_targets[index].to(device))

    def train_epoch(_: int) -> float:
        return _train_epoch(head, optimizer, len(train.inputs), generator, cfg, batch_loss)

    def valid_log_loss() -> float:
        return mean_log_loss(kind, predict_probe(head, valid, kind), valid.targets.numpy())

    return early_stopping(train_epoch, valid_log_loss, head, cfg, **kwargs)


@dataclass
class FeatureChunks:
    """Chunks of raw track features for fine-tuning, loaded on demand.

    Attributes:
        bounds: `(track index, start frame, end frame)` per chunk.
        load: Raw features `(T, C)` of a track index (normalized by the caller's `normalize`).
        targets: As in `ChunkSet`.
    """

    bounds: list[tuple[int, int, int]]
    load: Callable[[int], torch.Tensor]
    targets: torch.Tensor

    def batch(
        self, chunks: Sequence[int], normalize: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded `(B, T, C)` normalized features and `(B, T)` valid mask of some chunks."""
        picked = [self.bounds[i] for i in chunks]
        return pad_chunks([normalize(self.load(t)[s:e]) for t, s, e in picked])


@torch.no_grad()
def predict_finetune(
    model: FinetuneModel, data: FeatureChunks, kind: str, normalize: Callable, batch_size: int
) -> np.ndarray:
    """Track-level probabilities `(num_tracks, classes)` of a fine-tuned model."""
    model.eval()
    order = range(len(data.bounds))
    parts = [
        probabilities(kind, model(*data.batch(order[i : i + batch_size], normalize))).cpu()
        for i in range(0, len(order), batch_size)
    ]
    track = np.array([t for t, _, _ in data.bounds])
    return aggregate_tracks(torch.cat(parts).numpy(), track, data.targets.shape[0])


def train_finetune(
    model: FinetuneModel,
    train: FeatureChunks,
    valid: FeatureChunks,
    kind: str,
    cfg: TrainConfig,
    normalize: Callable,
    **kwargs,
) -> History:
    """Fine-tunes encoder and head (encoder at `encoder_lr`) with early stopping on `valid`."""
    device = model.head.mean.device
    optimizer = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": cfg.encoder_lr},
            {"params": model.head.parameters(), "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    track = torch.tensor([t for t, _, _ in train.bounds])

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        features, valid_mask = train.batch(index.tolist(), normalize)
        return loss_fn(kind, model(features, valid_mask), train.targets[track[index]].to(device))

    def train_epoch(_: int) -> float:
        return _train_epoch(model, optimizer, len(train.bounds), generator, cfg, batch_loss)

    def valid_log_loss() -> float:
        probs = predict_finetune(model, valid, kind, normalize, cfg.batch_size)
        return mean_log_loss(kind, probs, valid.targets.numpy())

    return early_stopping(train_epoch, valid_log_loss, model, cfg, **kwargs)
