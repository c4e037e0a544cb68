"""Downstream metrics and track-level aggregation (DESIGN §8).

Genre (single label): accuracy, confusion matrix (rows = true class, columns = predicted) and
log-loss. Tagging (multi-label): macro ROC-AUC and PR-AUC (average precision) from
scikit-learn, over the tags that have both positives and negatives in the evaluated set (a tag
with one class has no defined AUC; how many were left out is reported), and log-loss as the mean
binary cross-entropy over all cells. All functions are pure and work on numpy arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, log_loss, roc_auc_score

from musicoder.downstream.config import GENRE

log = logging.getLogger(__name__)

PROB_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logs
TABLE_KEYS = ("accuracy", "roc_auc", "pr_auc", "log_loss")


def aggregate_tracks(
    chunk_probs: np.ndarray, chunk_track: np.ndarray, num_tracks: int
) -> np.ndarray:
    """Averages chunk predictions per track.

    Args:
        chunk_probs: `(N, K)` probabilities per chunk.
        chunk_track: `(N,)` index of each chunk's track, in `[0, num_tracks)`.
        num_tracks: Number of tracks.

    Returns:
        `(num_tracks, K)` mean probabilities.

    Raises:
        ValueError: A track has no chunk (its prediction would be undefined).
    """
    chunk_track = np.asarray(chunk_track, dtype=np.int64)
    counts = np.bincount(chunk_track, minlength=num_tracks)
    if len(counts) != num_tracks or (counts == 0).any():
        raise ValueError(f"aggregate_tracks: every one of {num_tracks} tracks needs >= 1 chunk")
    sums = np.zeros((num_tracks, chunk_probs.shape[1]), dtype=np.float64)
    np.add.at(sums, chunk_track, np.asarray(chunk_probs, dtype=np.float64))
    return sums / counts[:, None]


def effective_rank(states: np.ndarray) -> float:
    """Effective rank (Roy and Vetterli, 2007) of `(N, D)` vectors: exp of the entropy of the
    normalized singular values of the centered matrix; D for isotropic states, 1 for states on
    one line. A collapsed encoder uses few of its D dimensions."""
    centered = np.asarray(states, dtype=np.float64)
    centered = centered - centered.mean(axis=0)
    singular = np.linalg.svd(centered, compute_uv=False)
    if singular.sum() <= 0:
        return 0.0
    p = singular / singular.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_log_loss(kind: str, probs: np.ndarray, targets: np.ndarray) -> float:
    """Log-loss: cross-entropy of the true class (genre) or mean binary cross-entropy (tagging).

    Args:
        kind: `genre` or `tagging`.
        probs: `(N, K)` probabilities.
        targets: `(N,)` class indices (genre) or `(N, K)` 0/1 (tagging).
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    if kind == GENRE:
        probs = probs / probs.sum(axis=1, keepdims=True)
        return float(log_loss(targets, probs, labels=np.arange(probs.shape[1])))
    return float(log_loss(np.ravel(targets), np.ravel(probs), labels=[0, 1]))


def genre_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, confusion matrix and log-loss of single-label predictions.

    Args:
        probs: `(N, K)` class probabilities per track.
        labels: `(N,)` true class indices.

    Returns:
        `{"accuracy", "log_loss", "confusion_matrix"}`; the matrix is a K x K list of lists,
        row = true class, column = predicted class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(probs).argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=np.arange(probs.shape[1]))
    return {
        "accuracy": float((predicted == labels).mean()),
        "log_loss": mean_log_loss(GENRE, probs, labels),
        "confusion_matrix": matrix.tolist(),
    }


def tagging_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Macro ROC-AUC, macro PR-AUC and log-loss of multi-label predictions.

    Args:
        probs: `(N, K)` tag probabilities per track.
        targets: `(N, K)` 0/1 ground truth.

    Returns:
        `{"roc_auc", "pr_auc", "log_loss", "tags_evaluated", "tags_without_both_classes"}`;
        the AUCs are None when no tag has both classes.
    """
    targets = np.asarray(targets, dtype=np.int64)
    positives = targets.sum(axis=0)
    usable = (positives > 0) & (positives < targets.shape[0])
    if not usable.all():
        log.warning(
            "tagging metrics: %d tags have only one class and are left out of the AUCs",
            (~usable).sum(),
        )
    roc = pr = None
    if usable.any():
        roc = float(roc_auc_score(targets[:, usable], probs[:, usable], average="macro"))
        pr = float(average_precision_score(targets[:, usable], probs[:, usable], average="macro"))
    return {
        "roc_auc": roc,
        "pr_auc": pr,
        "log_loss": mean_log_loss("tagging", probs, targets),
        "tags_evaluated": int(usable.sum()),
        "tags_without_both_classes": int((~usable).sum()),
    }


def compute_metrics(kind: str, probs: np.ndarray, targets: np.ndarray) -> dict:
    """`genre_metrics` or `tagging_metrics`, by `kind`."""
    return genre_metrics(probs, targets) if kind == GENRE else tagging_metrics(probs, targets)


def format_table(
    results: Mapping[str, Mapping[str, object]], keys: Sequence[str] = TABLE_KEYS
) -> str:
    """A plain-text table: one row per model (e.g. pretrained, random_init), one column per metric.

    Args:
        results: Model name -> its test metrics.
        keys: Metric columns to show when present in any row.
    """
    columns = [k for k in keys if any(k in row for row in results.values())]
    width = max([len("model"), *map(len, results)])
    lines = ["  ".join(["model".ljust(width), *(c.rjust(9) for c in columns)])]
    for name, row in results.items():
        cells = [
            f"{row[c]:9.4f}" if isinstance(row.get(c), float) else f"{'-':>9}" for c in columns
        ]
        lines.append("  ".join([name.ljust(width), *cells]))
    return "\n".join(lines)
