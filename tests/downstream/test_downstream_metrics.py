"""Metrics against hand-computed values on small fixed cases, and track-level aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musicoder.downstream.metrics import (
    aggregate_tracks,
    format_table,
    genre_metrics,
    mean_log_loss,
    tagging_metrics,
)


def test_genre_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 1, 2])
    m = genre_metrics(probs, labels)
    assert m["accuracy"] == 0.75
    assert m["log_loss"] == pytest.approx(
        -(math.log(0.7) + math.log(0.6) + math.log(0.4) + math.log(0.6)) / 4
    )
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]  # row = true class


def test_genre_log_loss_counts_absent_classes_and_clips_zero():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # class 2 never appears
    assert mean_log_loss("genre", probs, np.array([0, 0])) == pytest.approx(
        -math.log(1e-7 / (1 + 2e-7)) / 2, rel=1e-3
    )


def test_tagging_metrics_by_hand():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]])
    probs = np.array([[0.9, 0.2, 0.1], [0.8, 0.6, 0.2], [0.3, 0.7, 0.3], [0.1, 0.4, 0.1]])
    m = tagging_metrics(probs, targets)
    # Tag 0: positives {0.9, 0.3}, negatives {0.8, 0.1}: 3 of 4 pairs ordered -> AUC 0.75;
    # ranked 0.9+, 0.8-, 0.3+, 0.1-: AP = (1/1 + 2/3) / 2. Tag 1: every positive above the
    # only negative -> 1 and 1. Tag 2 has no positive: left out of the AUCs.
    assert m["roc_auc"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["pr_auc"] == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)
    assert (m["tags_evaluated"], m["tags_without_both_classes"]) == (2, 1)
    bce = -(targets * np.log(probs) + (1 - targets) * np.log(1 - probs)).mean()
    assert m["log_loss"] == pytest.approx(bce)


def test_tagging_without_any_usable_tag_reports_none():
    m = tagging_metrics(np.array([[0.2], [0.4]]), np.array([[0], [0]]))
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["tags_evaluated"] == 0


def test_aggregate_tracks_averages_chunks_per_track():
    chunk_probs = np.array([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0], [0.1, 0.9], [0.3, 0.7]])
    chunk_track = np.array([0, 0, 2, 1, 2])  # interleaved on purpose
    out = aggregate_tracks(chunk_probs, chunk_track, 3)
    np.testing.assert_allclose(out, [[0.4, 0.6], [0.1, 0.9], [0.65, 0.35]])
    with pytest.raises(ValueError, match="needs >= 1 chunk"):
        aggregate_tracks(chunk_probs, chunk_track, 4)


def test_format_table_lists_models_and_metrics():
    table = format_table(
        {
            "pretrained": {"accuracy": 0.5, "log_loss": 1.25},
            "handcrafted": {"accuracy": 0.75, "log_loss": 0.5},
        }
    )
    header, first, second = table.splitlines()
    assert header.split() == ["model", "accuracy", "log_loss"]
    assert first.split() == ["pretrained", "0.5000", "1.2500"]
    assert second.split() == ["handcrafted", "0.7500", "0.5000"]
