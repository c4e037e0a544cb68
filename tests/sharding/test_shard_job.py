"""Integration tests of the sharding job on a local Ray: the awkward corpus end to end.

One shared run (``shard_run`` in tests/fixtures_sharding.py) is checked from several angles;
resume, refusal, overwrite, reject limits and the kill/re-run test add small runs of their own.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_audio import write_tone
from fixtures_sharding import RUN_ARGS, ShardCorpus, ShardRun, is_val, shard_config, sharding_env

from musicoder.sharding import ShardJobConfig, run
from musicoder.sharding.driver import ShardOutputError
from musicoder.sharding.plan import MISSING_REASON

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _shards(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.tar"))


def _read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname) == (0, 0, 0, "musicoder")
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _visible_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def _without_created(data: bytes) -> dict:
    manifest = json.loads(data)
    assert manifest.pop("created")
    return manifest


def test_rejects_and_counts_add_up(shard_run: ShardRun, shard_corpus: ShardCorpus):
    assert shard_run.result.exit_code == 0, shard_run.result.summary
    out = shard_run.output
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    got = {r["uri"]: r["error"] for r in rejects}
    assert got == {u: e for u, e in shard_corpus.expected.items() if e is not None}
    assert all(r["reason"] for r in rejects)
    assert {r["reason"] for r in rejects if "links" in r["uri"]} == {MISSING_REASON}
    counts = _json(out / "manifest.json")["counts"]
    assert counts["inputs"] == len(shard_corpus.expected) == counts["accepted"] + counts["rejected"]
    assert counts["accepted"] == len(shard_corpus.accepted)
    assert counts["truncated"] == len(shard_corpus.truncated)
    assert shard_run.result.counts == counts


def test_indexes_describe_their_tars(shard_run: ShardRun, shard_corpus: ShardCorpus):
    import hashlib

    out = shard_run.output
    manifest = _json(out / "manifest.json")
    listed = {e["name"]: e for e in manifest["train"] + manifest["val"]}
    sources: dict[str, list[dict]] = {}
    for tar_path in _shards(out):
        index = _json(tar_path.with_suffix(".json"))
        samples = _read_tar(tar_path)
        assert index["sha256"] == hashlib.sha256(tar_path.read_bytes()).hexdigest()
        assert list(samples) == index["keys"] and index["samples"] == len(samples)
        feats = [np.load(io.BytesIO(s["feat.npy"]), allow_pickle=False) for s in samples.values()]
        assert [f.shape[0] for f in feats] == index["sample_frames"]
        for sample in samples.values():
            assert set(sample) == {"feat.npy", "json", "flac"}
            meta = json.loads(sample["json"])
            assert meta["truncated"] == (meta["source"] in shard_corpus.truncated)
            sources.setdefault(meta["source"], []).append(meta)
        if index["samples"]:
            assert listed[tar_path.name]["samples"] == index["samples"]
            wide = np.concatenate(feats).astype(np.float64)
            np.testing.assert_allclose(index["sum"], wide.sum(0), rtol=1e-9, atol=1e-6)
    # Every accepted file has its segments, consecutive from 0; rejected files have none.
    assert set(sources) == shard_corpus.accepted
    for metas in sources.values():
        assert sorted(m["segment"] for m in metas) == list(range(len(metas)))
    assert manifest["counts"]["segments"] == sum(len(m) for m in sources.values())


def test_manifest_stats_equal_numpy_over_train_shards(shard_run: ShardRun):
    out = shard_run.output
    manifest = _json(out / "manifest.json")
    frames = [
        np.load(io.BytesIO(s["feat.npy"]), allow_pickle=False)
        for e in manifest["train"]
        for s in _read_tar(out / e["name"]).values()
    ]
    wide = np.concatenate(frames).astype(np.float64)
    assert manifest["stats"]["count"] == len(wide) and manifest["channels"] == wide.shape[1] == 324
    np.testing.assert_allclose(manifest["stats"]["mean"], wide.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(manifest["stats"]["std"], wide.std(0), rtol=1e-6, atol=1e-9)
    assert manifest["plan_fingerprint"] == _json(out / "plan.json")["fingerprint"]
    assert manifest["preset"] == "musicoder324" and manifest["feature"]["hop_length"] == 1024


def test_val_split_and_webdataset_read_back(shard_run: ShardRun, shard_corpus: ShardCorpus):
    import webdataset as wds

    out = shard_run.output
    manifest = _json(out / "manifest.json")
    for split in ("train", "val"):
        urls = [str(out / e["name"]) for e in manifest[split]]
        # Raw bytes only, decoded here without any pickle-capable decoder.
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        got = set()
        for sample in dataset:
            meta = json.loads(sample["json"])
            feat = np.load(io.BytesIO(sample["feat.npy"]), allow_pickle=False)
            assert feat.shape == (meta["frames"], 324) and sample["__key__"].count(".") == 0
            got.add(meta["source"])
        assert got == {u for u in shard_corpus.accepted if is_val(u) == (split == "val")}
        assert all(
            e["name"].startswith("val-" if split == "val" else "shard-") for e in manifest[split]
        )


def test_complete_output_is_left_alone_and_other_plans_refused(
    shard_run: ShardRun, shard_corpus: ShardCorpus
):
    out = shard_run.output
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(shard_config(shard_corpus, out, max_in_flight=1), progress=False)
    assert again.status == "already_complete" and again.exit_code == 0
    with pytest.raises(ShardOutputError, match="different plan.*--overwrite"):
        run(shard_config(shard_corpus, out, seed=1), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_overwrite_too_many_rejects_then_raised_limit(tmp_path: Path, bad_audio_dir, ray_local):
    corpus = tmp_path / "small"
    corpus.mkdir()
    write_tone(corpus / "good.wav", 3.0)
    for name in ("zero_bytes.wav", "text.flac", "silence.flac"):
        (corpus / name).write_bytes(bad_audio_dir[name].path.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "plan.json").write_text('{"fingerprint": "old"}')
    (out / "shard-000009.tar").write_bytes(b"stale")
    (out / "notes.txt").write_text("not ours")
    cfg = ShardJobConfig(
        inputs=[str(corpus)], output=str(out), segment_seconds=2.5, val_fraction=0.0
    )
    with pytest.raises(ShardOutputError, match="different plan"):
        run(cfg, progress=False)
    failed = run(ShardJobConfig(**{**vars(cfg), "overwrite": True}), progress=False)
    assert (failed.status, failed.exit_code) == ("too_many_rejects", 3)
    assert not (out / "manifest.json").exists() and not (out / "shard-000009.tar").exists()
    assert (out / "notes.txt").exists() and len(
        (out / "rejects.jsonl").read_text().splitlines()
    ) == 3
    # A higher limit finishes the same plan from the shard indexes, without redoing them.
    tar_mtime = (out / "shard-000000.tar").stat().st_mtime_ns
    done = run(ShardJobConfig(**{**vars(cfg), "max_reject_fraction": 0.8}), progress=False)
    assert done.exit_code == 0 and _json(out / "manifest.json")["counts"]["rejected"] == 3
    assert (out / "shard-000000.tar").stat().st_mtime_ns == tar_mtime


def test_unreadable_plan_json_counts_as_a_different_plan(tmp_path: Path, ray_local):
    corpus = tmp_path / "small"
    corpus.mkdir()
    write_tone(corpus / "good.wav", 3.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "plan.json").write_text("{not json")
    cfg = ShardJobConfig(
        inputs=[str(corpus)], output=str(out), segment_seconds=2.5, val_fraction=0.0
    )
    with pytest.raises(ShardOutputError, match="different plan.*--overwrite"):
        run(cfg, progress=False)
    assert (out / "plan.json").read_text() == "{not json"  # nothing replaced without --overwrite
    done = run(ShardJobConfig(**{**vars(cfg), "overwrite": True}), progress=False)
    assert done.exit_code == 0 and _json(out / "plan.json")["fingerprint"]


def test_dry_run_writes_nothing_and_ray_job_refuses_relative_paths(
    shard_corpus, tmp_path, monkeypatch
):
    out = tmp_path / "dry"
    result = run(shard_config(shard_corpus, out), dry_run=True)
    assert result.status == "dry_run" and "train" in result.summary and not out.exists()
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "x"}})
    )
    with pytest.raises(ValueError, match="relative local path"):
        run(ShardJobConfig(inputs=[str(shard_corpus.root)], output="shards/rel"), dry_run=True)


def test_sigkill_driver_then_rerun_equals_clean_run(
    shard_run: ShardRun, shard_corpus, ray_local, tmp_path
):
    """Also the determinism test: the resumed output must equal the clean run byte for byte."""
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(REPO / "launch" / "shard.py"),
        "--output",
        str(out),
        "--max-in-flight",
        "1",
        "--no-progress",
        *RUN_ARGS,
    ]
    for uri in shard_corpus.inputs:
        cmd += ["--input", uri]
    driver = subprocess.Popen(
        cmd,
        env=sharding_env(ray_local),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    reference = _visible_files(shard_run.output)
    try:
        deadline = time.monotonic() + 120
        while (
            not list(out.glob("shard-*.json"))
            and driver.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=30)
        driver.stderr.close()
    assert not (out / "manifest.json").exists()
    for name, data in _visible_files(out).items():  # nothing partial under a final name
        if name.endswith(".tar"):
            assert data == reference[name], name
    done_before = {
        p.name: p.stat().st_mtime_ns for p in out.glob("*.json") if p.name != "plan.json"
    }
    assert done_before and len(done_before) < len(list(shard_run.output.glob("*-*.json")))
    result = run(shard_config(shard_corpus, out), progress=False)
    assert result.exit_code == 0, result.summary
    resumed = _visible_files(out)
    assert set(resumed) == set(reference)
    for name in reference:
        if name == "manifest.json":
            assert _without_created(resumed[name]) == _without_created(reference[name])
        else:
            assert resumed[name] == reference[name], name
    assert {n: (out / n).stat().st_mtime_ns for n in done_before} == done_before  # not redone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # stale temp files cleaned
