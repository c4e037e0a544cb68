"""Tests for bench/science.py's summary: means and spreads, and the layer chosen on valid."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "science.py"
_SPEC = importlib.util.spec_from_file_location("science_bench", _PATH)
science = importlib.util.module_from_spec(_SPEC)
sys.modules["science_bench"] = science
_SPEC.loader.exec_module(science)


def _split(accuracy: float, log_loss: float) -> dict:
    return {"accuracy": accuracy, "log_loss": log_loss}


def _run(pre_layers: list[tuple[float, float]], seed: int) -> dict:
    """A genre run whose pre-trained encoder has the given (valid, test) log-losses per layer."""

    def encoder(layers, weighted):
        return {
            "valid": _split(0.5, weighted),
            "test": _split(0.5, weighted),
            "per_layer": [
                {"layer": k, "valid": _split(0.5, v), "test": _split(0.5 + 0.1 * k, t)}
                for k, (v, t) in enumerate(layers)
            ],
        }

    return {
        "task": "a",
        "head": "linear",
        "pretrain_seed": seed,
        "probe_seed": 0,
        "metrics": {
            "kind": "genre",
            "models": {
                "pretrained": encoder(pre_layers, 1.0),
                "random_init": encoder([(1.0, 1.0), (1.1, 1.1)], 1.0),
                "handcrafted": {"valid": _split(0.6, 0.9), "test": _split(0.6, 0.9)},
            },
        },
    }


def test_summary_scores_each_encoder_at_the_layer_its_valid_split_chose():
    runs = [_run([(0.9, 0.2), (0.7, 0.4)], 0), _run([(0.6, 0.3), (0.8, 0.1)], 1)]
    head = science.summarize(science.merge_folds(runs))["a"]["heads"]["linear"]
    chosen = head["models"]["pretrained@layer"]
    assert chosen["chosen_layers"] == [1, 0]  # lowest valid log-loss, never the test's
    assert chosen["test"]["log_loss"]["mean"] == pytest.approx(0.35)  # (0.4 + 0.3) / 2
    assert chosen["test"]["log_loss"]["std"] == pytest.approx(0.05)
    assert head["models"]["random_init@layer"]["chosen_layers"] == [0, 0]
    margin = head["verdict_layer"]["log_loss_vs_random_init@layer"]
    assert margin["margin"] == pytest.approx(1.0 - 0.35) and margin["wins"]
    assert "handcrafted@layer" not in head["models"]
    assert head["verdict"]["log_loss_vs_handcrafted"]["margin"] == pytest.approx(0.9 - 1.0)


def test_folds_are_averaged_per_seed_pair_before_the_spread():
    # Seed 0 has two fold rotations whose layer choices differ; seed 1 has one.
    runs = [
        _run([(0.9, 0.2), (0.7, 0.4)], 0),
        _run([(0.6, 0.3), (0.8, 0.1)], 0),
        _run([(0.6, 0.5), (0.8, 0.1)], 1),
    ]
    merged = science.merge_folds(runs)
    assert sorted((r["pretrain_seed"], r["folds"]) for r in merged) == [(0, 2), (1, 1)]
    seed0 = next(r for r in merged if r["pretrain_seed"] == 0)["models"]
    assert seed0["pretrained@layer"]["chosen_layer"] == [1, 0]  # each fold's own valid choice
    assert seed0["pretrained@layer"]["test"]["log_loss"] == pytest.approx(0.35)  # (0.4 + 0.3) / 2
    assert seed0["pretrained"]["per_layer"][1]["test"]["log_loss"] == pytest.approx(0.25)
    head = science.summarize(merged)["a"]["heads"]["linear"]
    assert head["runs"] == 2
    chosen = head["models"]["pretrained@layer"]
    assert chosen["chosen_layers"] == [1, 0, 0]
    assert chosen["test"]["log_loss"]["mean"] == pytest.approx((0.35 + 0.5) / 2)
    assert chosen["test"]["log_loss"]["std"] == pytest.approx(0.075)  # over seeds, not folds


def test_one_seed_pair_gets_margins_but_no_verdict():
    def summary(seeds: int) -> dict:
        runs = [_run([(0.9, 0.2), (0.7, 0.4)], seed) for seed in range(seeds)]
        for run in runs:
            for model in ("pretrained", "random_init"):
                run["metrics"]["models"][model]["effective_rank"] = [10.0, 9.0]
        return science.summarize(science.merge_folds(runs))

    one = summary(1)
    margin = one["a"]["heads"]["linear"]["verdict"]["log_loss_vs_random_init"]
    assert margin["spread"] == 0.0 and margin["wins"] is None
    results = {
        "date": "2026-12-07",
        "config": {"recipe": "r.yaml", "set": [], "probe_seeds": 1, "machine": "2 cores"},
        "pretrain": [{"seed": 0, "wall_seconds": 60.0, "final": {}}],
    }
    text = science.markdown({**results, "summary": one})
    assert "Margins (one seed pair: no verdict): " in text
    assert "✔" not in text and "✘" not in text
    two = summary(2)["a"]["heads"]["linear"]["verdict"]["log_loss_vs_random_init"]
    assert two["wins"] is False  # identical seed pairs: spread 0, and a margin below it


def test_each_probe_grid_has_its_own_folder(tmp_path):
    old = science._probe_root(tmp_path, "[0.001,0.003,0.01]")
    new = science._probe_root(tmp_path, science.PROBE_LR_GRID)
    other = science._probe_root(tmp_path, "[0.1]")
    assert old == tmp_path / "probes"  # the first grid's results stay where they were
    assert len({old, new, other}) == 3 and new.name.startswith("probes-lr")
    assert science._probe_root(tmp_path, science.PROBE_LR_GRID) == new  # stable: a re-run resumes
