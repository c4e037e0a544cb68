"""S3 throttling and outages in the sharding job (DESIGN §9), with the real driver
(`launch/shard.py` in a subprocess with its own local Ray, whose workers inherit the S3
environment as on a cluster) reading its inputs through the fault proxy of tests/fixtures_s3.py.

One job, two runs: the endpoint goes away for good while shards are in flight (the job stops
within the retries of one task, with one line naming the endpoint), then comes back throttled
(~20% of requests answered 503 SlowDown at full task concurrency): the re-run resumes, finishes,
and counts its retries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_audio import write_tone

from musicoder import storage

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FILES = 8  # one file per shard: 8 shards
ARGS = ("--segment-seconds", "2.5", "--set", "shard_size_mb=0.01", "--val-fraction", "0")
SETS = ("max_retries=1", "calibration_files=0", "max_in_flight=2")


def _shard(inputs: str, output: Path, *, endpoint: str) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "launch" / "shard.py"), "--input", inputs]
    cmd += ["--output", str(output), "--no-progress", *ARGS]
    for item in SETS:
        cmd += ["--set", item]
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_MAX_ATTEMPTS="4")
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


@pytest.mark.timeout(600)
def test_outage_stops_the_job_then_a_throttled_rerun_resumes(
    s3_env: str, fault_proxy, tmp_path: Path
):
    for i in range(FILES):
        path = write_tone(tmp_path / f"t{i}.wav", 3.0, 16000, seed=i)
        storage.write_file(storage.join(s3_env, f"audio/t{i}.wav"), path)
    inputs, out = storage.join(s3_env, "audio"), tmp_path / "out"

    # Outage: the endpoint disappears once the first shard is done.
    proxy = fault_proxy()
    driver = _shard(inputs, out, endpoint=proxy.url)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("shard-*.json")) and driver.poll() is None:
            assert time.monotonic() < deadline, "no shard finished"
            time.sleep(0.05)
        proxy.stop()
        stopped = time.monotonic()
        code, stdout, stderr = _finish(driver, timeout=180)
    finally:
        driver.kill()
    took = time.monotonic() - stopped
    assert code == 1, stderr[-3000:]
    line = stdout.strip().splitlines()[-1]
    assert f"S3 endpoint {proxy.url} unavailable" in line and "re-run the same command" in line
    assert not (out / "manifest.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.json")}
    assert 1 <= len(done) < FILES
    print(f"outage: stopped {took:.1f} s after the endpoint went away, {len(done)} shards done")

    # Back, throttled: ~20% of requests answered 503 SlowDown.
    throttled = fault_proxy(p_503=0.2, seed=7)
    code, stdout, stderr = _finish(_shard(inputs, out, endpoint=throttled.url), timeout=240)
    assert code == 0, stderr[-3000:]
    assert f"resuming {out}: {len(done)} of {FILES} shards already done" in stderr
    retries = [line for line in stderr.splitlines() if "S3 retries in shard tasks:" in line]
    assert retries and int(retries[-1].rsplit(":", 1)[1]) > 0, stderr[-3000:]
    assert throttled.counts["503"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    names = [s["name"] for s in manifest["train"]]
    assert len(names) == len(set(names)) == FILES  # every shard exactly once
    assert manifest["counts"]["accepted"] == FILES and manifest["counts"]["rejected"] == 0
    for name, mtime in done.items():  # the shards finished before the outage were not redone
        assert (out / name).stat().st_mtime_ns == mtime, name
