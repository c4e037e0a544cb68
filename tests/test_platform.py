"""Deployment files parse and point at things that exist (issue 8, item 3)."""

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ROOT / "platform"
YAML_FILES = sorted(p for p in PLATFORM.rglob("*") if p.suffix in {".yaml", ".yml"})
JSON_FILES = sorted(PLATFORM.rglob("*.json"))
TEXT_FILES = sorted(p for p in PLATFORM.rglob("*") if p.is_file()) + [ROOT / "Dockerfile"]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_expected_files_present() -> None:
    for rel in (
        "ray/cluster.yaml",
        "k8s/rayjob-shard.yaml",
        "k8s/pretrain.yaml",
        "deepspeed/hostfile.example",
        "slurm/pretrain.sbatch",
        "compose/docker-compose.yml",
        "grafana/musicoder.json",
    ):
        assert (PLATFORM / rel).is_file(), rel


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_referenced_repo_files_exist(path: Path) -> None:
    """Every launch script and config file a deployment file names is in the repo."""
    text = path.read_text()
    for ref in sorted(set(re.findall(r"\b((?:launch|configs)/[\w./-]+\.(?:py|yaml|json))", text))):
        assert (ROOT / ref).is_file(), f"{path.name} references missing {ref}"


def test_rayjob_runs_the_sharder() -> None:
    job = yaml.safe_load((PLATFORM / "k8s/rayjob-shard.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("python launch/shard.py")


def test_k8s_pretrain_uses_node_rank_per_pod() -> None:
    docs = list(yaml.safe_load_all((PLATFORM / "k8s/pretrain.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    args = " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--no_ssh" in args and "JOB_COMPLETION_INDEX" in args


def test_grafana_dashboard_queries_shard_metrics() -> None:
    dash = json.loads((PLATFORM / "grafana/musicoder.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    from musicoder.sharding.metrics import METRIC_PREFIX

    for name in ("files", "rejects", "audio_seconds", "bytes_written", "shards_done", "s3_retries"):
        assert f"ray_{METRIC_PREFIX}{name}" in exprs, name
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_hostfile_format() -> None:
    lines = [
        ln
        for ln in (PLATFORM / "deepspeed/hostfile.example").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines and all(re.fullmatch(r"\S+ slots=\d+", ln) for ln in lines)


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker compose is not installed")
def test_compose_config_validates() -> None:
    out = subprocess.run(
        ["docker", "compose", "-f", str(PLATFORM / "compose/docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


RANK_PATTERN = "--local_rank="  # what the rank processes' command lines have and launchers lack


def test_slurm_stops_ranks_saves_and_requeues() -> None:
    """5 min before the limit the batch shell gets USR1, SIGTERMs every rank on every node (not
    the launchers), waits for the stop checkpoint and requeues; the job resumes by itself."""
    path = PLATFORM / "slurm/pretrain.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+", text, re.M)
    assert re.search(r"^#SBATCH --requeue", text, re.M)
    assert re.search(r"^trap stop_and_requeue USR1$", text, re.M)
    assert 'pkill -TERM -f -- "$RANKS"' in text and "scontrol requeue" in text
    assert "--kill-on-bad-exit=1" in text and "--resume auto" in text


def test_slurm_stop_pattern_signals_this_runs_ranks_only(tmp_path) -> None:
    """pkill with the sbatch's pattern, on stand-in processes with rank-like command lines:
    this run's ranks get SIGTERM; its launcher and another run's ranks (same user, shared
    node, a folder that only extends this one's name) do not."""
    line = next(
        x
        for x in (PLATFORM / "slurm/pretrain.sbatch").read_text().splitlines()
        if x.startswith("RANKS=")
    )
    run_dir, other_dir = tmp_path / "runs" / "job", tmp_path / "runs" / "job10"
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]

    def process(*args: str) -> subprocess.Popen:
        return subprocess.Popen([*sleeper, *args])

    def rank(directory) -> subprocess.Popen:
        return process("--local_rank=0", "--config", "c.yaml", "--set",
                       f"train.output_dir={directory}", "--resume", "auto")  # fmt: skip

    ours, last_arg = rank(run_dir), process("--local_rank=1", f"train.output_dir={run_dir}")
    launcher = process("launch/pretrain.py", "--set", f"train.output_dir={run_dir}")
    theirs = rank(other_dir)
    try:
        script = f'RUN_DIR={run_dir}\n{line}\npkill -TERM -f -- "$RANKS"'
        assert subprocess.run(["bash", "-c", script], timeout=30).returncode == 0
        assert ours.wait(timeout=30) == -signal.SIGTERM
        assert last_arg.wait(timeout=30) == -signal.SIGTERM
        assert launcher.poll() is None and theirs.poll() is None
    finally:
        for p in (ours, last_arg, launcher, theirs):
            p.kill()
            p.wait()


def test_k8s_pid1_forwards_sigterm_to_the_ranks() -> None:
    docs = list(yaml.safe_load_all((PLATFORM / "k8s/pretrain.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]
    script = spec["containers"][0]["args"][0]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "exec " not in script  # the shell stays PID 1 to hold the trap
    assert f"pkill -TERM -f -- '{RANK_PATTERN}'\" TERM" in script and "--resume auto" in script
    assert spec["terminationGracePeriodSeconds"] >= 300
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"type": "DisruptionTarget"} in rules[0]["onPodConditions"]
