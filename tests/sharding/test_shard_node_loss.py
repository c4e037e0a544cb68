"""A Ray worker node dies mid-job (DESIGN §9): a 2-node cluster on this machine (`ray start
--head --block` with 1 CPU, a second `ray start --address ... --block` with 2 CPUs, both child
processes of the test on free ports, token authentication on as after a local `ray.init()`),
the real driver (`launch/shard.py` joining the cluster by RAY_ADDRESS) shards the session's
awkward corpus, and the second node's raylet is SIGKILLed while shard tasks run on it. The job
either finishes (Ray retries the lost tasks on the head) or exits non-zero and a re-run
finishes; either way every shard appears once and the output equals the uninterrupted
`shard_run` byte for byte (the manifest up to `created`).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from fixtures_sharding import RUN_ARGS, ShardCorpus, ShardRun
from test_shard_ray_job import PORT_FLAGS, _free_ports, _ray, stop_node, token_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
WORKER_PORT_FLAGS = (  # a second node on the same machine needs its own ports
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)


def _tasks_on(raylet: psutil.Process) -> list[psutil.Process]:
    """Worker processes of `raylet` running a shard task (Ray sets their title)."""
    found = []
    for child in raylet.children(recursive=True):
        try:
            if "_process_one_thread" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
def two_nodes(tmp_path: Path):
    """Head (1 CPU) and a second node (2 CPUs); yields (GCS address, env, second node handle)."""
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray puts sockets below it
    env = dict(token_env(tmp_path), PYTHONUNBUFFERED="1")
    common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head_cmd = [_ray(), "start", "--head", *common, "--num-cpus", "1", "--temp-dir", temp_dir]
    head_cmd += ["--dashboard-host", "127.0.0.1", "--include-dashboard", "false"]
    for flag, port in ports.items():
        head_cmd += [flag, str(port)]
    gcs = f"127.0.0.1:{ports['--port']}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    head = subprocess.Popen(head_cmd, env=env, **quiet)
    nodes = [head]
    try:
        _wait_for_cpus(gcs, env, 1, head)
        worker_cmd = [_ray(), "start", "--address", gcs, *common, "--num-cpus", "2"]
        for flag, port in zip(WORKER_PORT_FLAGS, _free_ports(len(WORKER_PORT_FLAGS)), strict=True):
            worker_cmd += [flag, str(port)]
        worker = subprocess.Popen(worker_cmd, env=env, **quiet)
        nodes.append(worker)
        _wait_for_cpus(gcs, env, 3, worker)
        yield gcs, env, worker
    finally:
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_cpus(gcs: str, env: dict, cpus: int, proc: subprocess.Popen) -> None:
    probe = (
        "import ray; ray.init(address='auto', logging_level='ERROR');"
        "print(int(ray.cluster_resources().get('CPU', 0)))"
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start exited early"
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env=dict(env, RAY_ADDRESS=gcs),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(cpus)]:
            return
        time.sleep(2)
    pytest.fail(f"the cluster did not reach {cpus} CPUs within 180 s")


def _shard(gcs: str, env: dict, corpus: ShardCorpus, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "launch" / "shard.py"), "--output", str(out)]
    cmd += ["--no-progress", *RUN_ARGS]
    for uri in corpus.inputs:
        cmd += ["--input", uri]
    return subprocess.Popen(
        cmd,
        env=dict(env, RAY_ADDRESS=gcs),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(900)
def test_lost_worker_node_then_output_equals_the_clean_run(
    two_nodes, shard_run: ShardRun, shard_corpus: ShardCorpus, tmp_path: Path
):
    gcs, env, worker = two_nodes
    raylet = next(
        p for p in psutil.Process(worker.pid).children(recursive=True) if p.name() == "raylet"
    )
    out = tmp_path / "out"
    driver = _shard(gcs, env, shard_corpus, out)
    try:
        deadline = time.monotonic() + 300
        while not _tasks_on(raylet):
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no shard task ran on the second node"
            time.sleep(0.05)
        in_flight = len(_tasks_on(raylet))
        raylet.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = driver.communicate(timeout=600)
        first = driver.returncode
        took = time.monotonic() - killed
    finally:
        driver.kill()
    runs = [first]
    if first != 0:  # the lost tasks ran out of retries: a re-run redoes only what is missing
        assert "re-run the same command" in stdout + stderr, stderr[-3000:]
        again = _shard(gcs, env, shard_corpus, out)
        stdout, stderr = again.communicate(timeout=600)
        runs.append(again.returncode)
    assert runs[-1] == 0, stderr[-3000:]
    print(
        f"node lost with {in_flight} shard task(s) on it; first run exit {first} "
        f"{took:.1f} s after the kill; runs: {runs}"
    )

    reference = {p.name for p in shard_run.output.iterdir() if not p.name.startswith(".")}
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == reference
    for name in sorted(reference - {"manifest.json"}):
        assert (out / name).read_bytes() == (shard_run.output / name).read_bytes(), name
    manifest = json.loads((out / "manifest.json").read_text())
    clean = json.loads((shard_run.output / "manifest.json").read_text())
    assert manifest.pop("created") and clean.pop("created")
    assert manifest == clean
    names = [s["name"] for split in ("train", "val") for s in manifest[split]]
    assert len(names) == len(set(names))  # every shard exactly once
