"""End to end: README's ``ray start --head`` + ``ray job submit`` writing shards to the loopback S3.

As on a machine where a local Ray (the demo) has already run, the home folder holds a token in
``~/.ray/auth_token`` (a temp HOME here: Ray reads the token from $HOME, so the real one is never
touched), ``ray start`` turns token authentication on, and the README's ``RAY_AUTH_MODE=token``
is what lets ``ray job`` send the token. The cluster is a child process started with the S3
environment (credentials reach Ray workers
through the environment of ``ray start``, DESIGN §3), on free ports and its own temp dir so it
never meets the session's in-process Ray or anyone else's, and it is stopped by its handle. The
job shards the same corpus with the same flags as the shared local run, so every object read
back from S3 must equal the local output byte for byte (the manifest up to ``created``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from fixtures_sharding import RUN_ARGS, ShardCorpus, ShardRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray() -> str:
    exe = VENV_BIN / "ray"
    return str(exe) if exe.exists() else shutil.which("ray") or pytest.skip("ray CLI not found")


def _submit_shard(url: str, *args: str, script: str = "launch/shard.py") -> list[str]:
    """`ray job submit` of `python SCRIPT ARGS` with this repository as working dir."""
    submit = [_ray(), "job", "submit", "--address", url, "--working-dir", str(REPO), "--"]
    return [*submit, "python", script, *args]


def stop_node(proc: subprocess.Popen) -> None:
    """Stop a ``ray start --block`` child (SIGTERM by handle), then whatever it started that
    is still there (by pid)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def token_env(tmp_path: Path) -> dict[str, str]:
    """Environment for Ray commands as on a machine where a local Ray has run: a temp HOME whose
    ``.ray/auth_token`` holds a token, and the README's ``RAY_AUTH_MODE=token``."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))  # as a local ray.init() does
    env = dict(
        os.environ,
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
        HOME=str(home),
        OMP_NUM_THREADS="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",  # README: `export RAY_AUTH_MODE=token`
    )
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    return env


@pytest.fixture
def ray_head(s3_env: str, tmp_path: Path):
    """``ray start --head --block`` as a child process with the S3 environment, the README's
    ``RAY_AUTH_MODE=token`` and a token already in ``$HOME/.ray``; yields its URL and env."""
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray puts sockets below it
    env = token_env(tmp_path)
    cmd = [
        _ray(),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--disable-usage-stats",
        "--temp-dir",
        temp_dir,
    ]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert head.poll() is None, "ray start --head exited early"
            probe = subprocess.run(
                [_ray(), "job", "list", "--address", url],
                check=False,
                env=env,
                capture_output=True,
                timeout=60,
            )
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("Ray head did not come up within 120 s")
        yield url, env
    finally:
        stop_node(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_shards_to_s3(
    ray_head, s3_env: str, shard_run: ShardRun, shard_corpus: ShardCorpus
):
    from musicoder import storage

    url, env = ray_head
    # Token authentication is really on: without RAY_AUTH_MODE=token, `ray job` sends no token.
    no_mode = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    probe = subprocess.run(
        [_ray(), "job", "list", "--address", url],
        check=False,
        env=no_mode,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode != 0 and "authentication" in (probe.stdout + probe.stderr).lower()
    token = (Path(env["HOME"]) / ".ray" / "auth_token").read_text()
    output = f"{s3_env}/corpus/v1"
    cmd = _submit_shard(url, "--output", output, "--no-progress", *RUN_ARGS)
    for uri in shard_corpus.inputs:
        cmd += ["--input", uri]
    job = subprocess.run(
        cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=480
    )
    logs = job.stdout[-3000:] + job.stderr[-3000:]
    assert job.returncode == 0, logs
    assert "sharded " in job.stdout and "succeeded" in job.stdout, logs
    assert token not in job.stdout + job.stderr  # never printed

    names = {storage.basename(info.uri) for info in storage.list_objects(output)}
    local = {p.name for p in shard_run.output.iterdir() if not p.name.startswith(".")}
    assert names == local
    for name in sorted(local - {"manifest.json"}):
        with storage.open_read(f"{output}/{name}") as f:
            assert f.read() == (shard_run.output / name).read_bytes(), name
    remote = storage.read_json(f"{output}/manifest.json")
    reference = json.loads((shard_run.output / "manifest.json").read_text())
    assert remote.pop("created") and reference.pop("created")
    assert remote == reference
    assert remote["counts"]["accepted"] == len(shard_corpus.accepted)

    # README: curate runs as a Ray job driver too, reading the shard indexes from S3.
    clean = f"{s3_env}/corpus/v1-clean"
    cmd = _submit_shard(
        url, "--input", output, "--output", clean, "--dedup", "--no-progress",
        script="launch/curate.py",
    )  # fmt: skip
    job = subprocess.run(
        cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    report = storage.read_json(f"{clean}/report.json")
    assert report["input"]["samples"] == remote["counts"]["segments"]
    assert storage.read_json(f"{clean}/view.json")["format"] == "musicoder-view"

    # Inside a Ray job a relative local path would land in the job's temp working dir: refused.
    cmd = _submit_shard(url, "--input", "/nonexistent-audio", "--output", "shards/relative")
    job = subprocess.run(
        cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert job.returncode != 0
    assert "relative local path" in job.stdout + job.stderr
