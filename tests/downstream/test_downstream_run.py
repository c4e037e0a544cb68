"""`downstream.run` on a small tone task with a random-init tiny encoder: outputs, skips,
TensorBoard, the feature cache (a second run decodes nothing) and the fine-tune path."""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_downstream import write_clip
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from musicoder.downstream import FinetuneConfig, TaskConfig, TrainConfig, run
from musicoder.downstream import cache as cache_module
from musicoder.downstream.cache import FeatureCache
from musicoder.pretrained import Encoder

ROOT = pathlib.Path(__file__).resolve().parents[2]
PITCHES = {"low": 220.0, "mid": 660.0, "high": 1980.0}
SPLITS = ["train", "train", "train", "valid", "test", "test"]


@pytest.fixture(scope="module")
def tone_task(tmp_path_factory):
    """18 clips (3 pitches x 6) plus bad rows: a missing file, a corrupt file, a silent file."""
    root = tmp_path_factory.mktemp("tones")
    rows = ["path,split,label,tags"]
    for label, hz in PITCHES.items():
        for i, split in enumerate(SPLITS):
            write_clip(root / label / f"{i}.wav", hz=hz, seed=i, seconds=2.5 + 0.7 * i)
            rows.append(f"{label}/{i}.wav,{split},{label},tone;{label}")
    (root / "corrupt.wav").write_bytes(b"RIFF" + bytes(512))
    sf.write(root / "silent.wav", np.zeros(22050 * 3, dtype=np.float32), 22050)
    rows += [
        "missing.wav,train,low,tone",
        "corrupt.wav,train,mid,tone",
        "silent.wav,test,high,tone",
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def count_extractions(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cache_module.extract_features

    def counting(waveform, *args, **kwargs):
        calls.append(waveform.shape[-1])
        return real(waveform, *args, **kwargs)

    monkeypatch.setattr(cache_module, "extract_features", counting)
    return calls


def test_probe_with_baselines_writes_everything_and_caches(
    tone_task, tiny_export, tmp_path, monkeypatch
):
    calls = count_extractions(monkeypatch)
    cfg = FinetuneConfig(
        encoder=str(tiny_export),
        task=TaskConfig(name="tones", path=str(tone_task)),
        baselines=True,
        output=str(tmp_path / "run1"),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        train=TrainConfig(max_epochs=30, patience=5),
    )
    metrics = run(cfg)
    assert len(calls) == 18  # every good track once; bad audio fails before extraction
    on_disk = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert on_disk == metrics
    assert (metrics["task"], metrics["kind"], metrics["mode"]) == ("tones", "genre", "probe")
    assert metrics["tracks"] == {"train": 9, "valid": 3, "test": 6} and metrics["skipped"] == 3
    assert set(metrics["baselines"]) == {"random_init", "handcrafted"}
    for result in (metrics["test"], *metrics["baselines"].values()):
        assert 0 <= result["accuracy"] <= 1 and result["log_loss"] > 0
        assert np.array(result["confusion_matrix"]).sum() == 6
    assert len(metrics["layer_weights"]) == 3 and sum(metrics["layer_weights"]) == pytest.approx(1)
    assert metrics["test"]["accuracy"] == 1.0  # pitch is trivially separable, even at random init

    with open(tmp_path / "run1" / "skipped.csv") as f:
        skipped = {row["where"].split(" ")[-1].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}
    assert skipped["missing.wav"]["reason"] == "file not found"
    assert skipped["corrupt.wav"]["error"] == "UnreadableAudioError"
    assert skipped["silent.wav"]["error"] == "SilentAudioError"
    with open(tmp_path / "run1" / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 6 and set(predictions[0]) == {"path", "target", "high", "low", "mid"}
    events = EventAccumulator(str(tmp_path / "run1" / "tensorboard" / "pretrained")).Reload()
    assert {"probe/train_loss", "probe/valid_log_loss", "test/accuracy"} <= set(
        events.Tags()["scalars"]
    )

    calls.clear()
    passes = count_encoder_passes(monkeypatch)
    again = run(FinetuneConfig(**{**cfg.__dict__, "output": str(tmp_path / "run2")}))
    assert calls == []  # second run: features come from the cache
    assert passes == []  # and pooled states too: no encoder pass
    assert again["test"] == metrics["test"]  # and the run is deterministic
    mlp = TrainConfig(max_epochs=30, patience=5, head="mlp", seed=1)
    other = run(FinetuneConfig(**{**cfg.__dict__, "output": str(tmp_path / "run3"), "train": mlp}))
    assert len(passes) == 3  # a new seed draws a new random-init encoder: its 3 splits only
    assert other["head"] == "mlp" and set(other["models"]) == {
        "pretrained",
        "random_init",
        "handcrafted",
    }


def test_lr_grid_keeps_the_rate_with_the_best_valid_log_loss(tone_task, tiny_export, tmp_path):
    base = FinetuneConfig(
        encoder=str(tiny_export),
        task=TaskConfig(name="tones", path=str(tone_task)),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )

    def probe(name: str, **train) -> dict:
        cfg = TrainConfig(max_epochs=8, patience=8, **train)
        return run(
            FinetuneConfig(**{**base.__dict__, "output": str(tmp_path / name), "train": cfg})
        )

    rates = (1e-4, 3e-2)  # far apart: the slow one is still far from fitted after 8 epochs
    alone = {lr: probe(f"lr{lr:g}", lr=lr) for lr in rates}
    grid = probe("grid", lr_grid=list(rates))
    best = min(rates, key=lambda lr: alone[lr]["valid_log_loss"])
    assert alone[1e-4]["valid_log_loss"] != pytest.approx(alone[3e-2]["valid_log_loss"])
    assert grid["models"]["pretrained"]["probe_lr"] == best
    assert grid["valid_log_loss"] == pytest.approx(alone[best]["valid_log_loss"])
    assert grid["test"] == alone[best]["test"]  # same head, same start: the same result
    events = EventAccumulator(str(tmp_path / "grid" / "tensorboard" / "pretrained")).Reload()
    assert {"probe_lr0.0001/valid_log_loss", "probe_lr0.03/valid_log_loss"} <= set(
        events.Tags()["scalars"]
    )
    with pytest.raises(ValueError, match="lr_grid"):
        TrainConfig(lr_grid=[0.01, 0.0])


def count_encoder_passes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = Encoder.iter_pooled_states

    def counting(self, tracks, **kwargs):
        calls.append(1)
        return real(self, tracks, **kwargs)

    monkeypatch.setattr(Encoder, "iter_pooled_states", counting)
    return calls


def test_finetune_mode_trains_the_encoder(tone_task, tiny_export, tmp_path):
    cfg = FinetuneConfig(
        encoder=str(tiny_export / "encoder.safetensors"),
        task=TaskConfig(name="tones", kind="tagging", path=str(tone_task)),
        mode="finetune",
        output=str(tmp_path / "ft"),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        train=TrainConfig(
            max_epochs=3, patience=2, batch_size=8, encoder_lr=1e-3, chunk_seconds=1.5
        ),
    )
    metrics = run(cfg)
    assert metrics["kind"] == "tagging" and metrics["mode"] == "finetune"
    assert metrics["baselines"] == {}
    assert metrics["test"]["tags_evaluated"] == 3  # 'tone' is on every track: no AUC for it
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0 and metrics["test"]["log_loss"] > 0
    events = EventAccumulator(str(tmp_path / "ft" / "tensorboard" / "pretrained")).Reload()
    assert "finetune/valid_log_loss" in events.Tags()["scalars"]


def test_feature_cache_key_follows_the_file(tmp_path, monkeypatch):
    calls = count_extractions(monkeypatch)
    clip = write_clip(tmp_path / "a.wav", hz=440)
    first = FeatureCache(str(tmp_path / "cache"), preset="musicoder324").get(str(clip))
    again = FeatureCache(str(tmp_path / "cache"), preset="musicoder324")
    torch.testing.assert_close(again.get(str(clip)), first)
    assert (len(calls), again.hits, again.misses) == (1, 1, 0)
    assert first.dtype == torch.float16 and first.shape[1] == 324

    capped = FeatureCache(str(tmp_path / "cache"), preset="musicoder324", max_seconds=1.0)
    assert capped.get(str(clip)).shape[0] < first.shape[0] and len(calls) == 2

    write_clip(clip, hz=880, seconds=3.0)  # rewritten: new size and mtime
    changed = again.get(str(clip))
    assert len(calls) == 3 and changed.shape != first.shape

    entry = again.entry_uri(str(clip))
    with open(entry, "wb") as f:
        f.write(b"garbage")
    torch.testing.assert_close(again.get(str(clip)), changed)  # damaged entry: recomputed
    assert len(calls) == 4


def test_finetune_cli_reports_a_task_without_usable_rows_in_one_line(tiny_export, tmp_path):
    """The user's command on a CSV whose 500 rows all name missing files."""
    rows = "".join(f"/data/gone/{i}.wav,{'train' if i % 2 else 'test'},rock,\n" for i in range(500))
    (tmp_path / "labels.csv").write_text("path,split,label,tags\n" + rows)
    task = f"name: t\nkind: genre\nsource: csv\npath: {tmp_path / 'labels.csv'}\n"
    (tmp_path / "task.yaml").write_text(task)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "finetune.py"),
            "--encoder",
            str(tiny_export),
            "--task",
            str(tmp_path / "task.yaml"),
            "--output",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: {tmp_path / 'labels.csv'}: task t has no train tracks: 500 of 500 rows "
        f"skipped: 500 file not found; listed in {out / 'skipped.csv'}"
    )
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert len((out / "skipped.csv").read_text().splitlines()) == 501
