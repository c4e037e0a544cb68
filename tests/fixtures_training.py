"""Training test data: shard sets in the documented v1 format, written without the sharder.

`write_shard_set` builds real tars (`<key>.feat.npy` float16 + `<key>.json`), per-shard index
JSON and a `manifest.json` with float64-merged stats, from smooth random sinusoids (learnable, so
a loss can fall). Session fixtures give one even set, one with uneven shard sizes and one with
fewer shards than ranks x workers, so loader and trainer tests share the writing cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

CHANNELS = 324
PRESET = "musicoder324"


def make_features(rng: np.random.Generator, frames: int, channels: int = CHANNELS) -> np.ndarray:
    """Smooth, structured `(frames, channels)` float16 features: two fixed channel profiles
    mixed by slow clip-specific sinusoids (rank 2), so a masked band is predictable from the
    other channels and masked frames from their neighbours: a tiny model's loss falls fast."""
    t = np.arange(frames)[:, None]
    c = np.arange(channels)[None, :]
    profiles = (np.sin(0.07 * c), np.cos(0.023 * c + 1.0))
    x = 3.0 + 0.01 * c  # channel offsets so CMVN has work to do
    for profile in profiles:
        w, phase = rng.uniform(0.05, 0.25), rng.uniform(0, 2 * np.pi)
        x = x + rng.uniform(0.5, 1.5) * np.sin(w * t + phase) * profile
    return (x + 0.02 * rng.standard_normal((frames, channels))).astype(np.float16)


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    root: pathlib.Path,
    name: str,
    split: str,
    sizes: Sequence[int],
    rng: np.random.Generator,
    *,
    preset: str = PRESET,
) -> dict:
    """Write `<name>.tar` with one sample per entry of `sizes` (frames) and its index JSON."""
    buf, keys = io.BytesIO(), []
    total = np.zeros(CHANNELS)
    sumsq = np.zeros(CHANNELS)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, frames in enumerate(sizes):
            key = f"{hashlib.sha1(f'{name}/{i}'.encode()).hexdigest()[:16]}_{i:05d}"
            feats = make_features(rng, frames)
            npy = io.BytesIO()
            np.save(npy, feats, allow_pickle=False)
            meta = {
                "source": f"file:///corpus/{name}/{i}.wav",
                "source_sha1": key[:16],
                "segment": i,
                "offset": 0.0,
                "seconds": frames / 21.533,
                "sample_rate": 22050,
                "frames": frames,
                "preset": preset,
                "truncated": False,
            }
            _member(tar, f"{key}.feat.npy", npy.getvalue())
            _member(tar, f"{key}.json", json.dumps(meta).encode())
            keys.append(key)
            f64 = feats.astype(np.float64)
            total += f64.sum(0)
            sumsq += (f64**2).sum(0)
    data = buf.getvalue()
    (root / f"{name}.tar").write_bytes(data)
    index = {
        "name": f"{name}.tar",
        "split": split,
        "samples": len(sizes),
        "frames": int(sum(sizes)),
        "seconds": sum(sizes) / 21.533,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "keys": keys,
        "sample_frames": list(sizes),
        "sum": total.tolist(),
        "sumsq": sumsq.tolist(),
        "count": int(sum(sizes)),
        "files": {"accepted": len(sizes), "rejected": 0, "truncated": 0},
        "rejects": [],
    }
    (root / f"{name}.json").write_text(json.dumps(index))
    return index


def write_shard_set(
    root: pathlib.Path,
    train: Sequence[int],
    val: Sequence[int] = (4,),
    *,
    frames: tuple[int, int] = (48, 160),
    seed: int = 0,
    preset: str = PRESET,
) -> pathlib.Path:
    """Write a complete shard set: `train[i]` samples in train shard i, `val[j]` in val shard j.

    Clip lengths are uniform in `frames` (some longer than a typical `max_frames`, to exercise
    cropping). Returns `root`, which holds `manifest.json`.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: dict[str, list[dict]] = {"train": [], "val": []}
    total, sumsq, count = np.zeros(CHANNELS), np.zeros(CHANNELS), 0
    for split, counts, prefix in (("train", train, "shard"), ("val", val, "val")):
        for i, n in enumerate(counts):
            sizes = [int(x) for x in rng.integers(frames[0], frames[1] + 1, size=n)]
            index = write_shard(root, f"{prefix}-{i:06d}", split, sizes, rng, preset=preset)
            entries[split].append(
                {
                    "name": index["name"],
                    "samples": n,
                    "frames": index["frames"],
                    "bytes": index["bytes"],
                    "sha256": index["sha256"],
                }
            )
            if split == "train":
                total += index["sum"]
                sumsq += index["sumsq"]
                count += index["count"]
    mean = total / count
    std = np.sqrt(np.maximum(sumsq / count - mean**2, 0.0))
    segments = sum(train) + sum(val)
    frames_all = sum(e["frames"] for e in entries["train"] + entries["val"])
    manifest = {
        "format": "musicoder-shards",
        "format_version": 1,
        "preset": preset,
        "feature": {"preset": preset, "sample_rate": 22050, "n_fft": 2048, "hop_length": 1024},
        "channels": CHANNELS,
        "counts": {
            "inputs": segments,
            "accepted": segments,
            "rejected": 0,
            "truncated": 0,
            "segments": segments,
            "frames": frames_all,
            "hours": frames_all / 21.533 / 3600,
        },
        "train": entries["train"],
        "val": entries["val"],
        "stats": {"count": count, "mean": mean.tolist(), "std": std.tolist()},
        "plan_fingerprint": "0" * 64,
        "config": {},
        "code_version": "0.1.0",
        "created": "2026-01-01T00:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def sample_ids(root: pathlib.Path) -> dict[bytes, str]:
    """First feature row (bytes of float32) -> key, for every sample of a shard set: what a
    batch's uncropped, unnormalized clip says about where it came from."""
    ids = {}
    for path in sorted(root.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".feat.npy"):
                    feats = np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
                    ids[feats[0].astype(np.float32).tobytes()] = m.name.split(".")[0]
    return ids


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory) -> pathlib.Path:
    """Six even train shards of 12 clips (72 clips) and two val shards: the trainer's data."""
    return write_shard_set(tmp_path_factory.mktemp("shards_even"), [12] * 6, [8, 8], seed=1)


def write_view(path: pathlib.Path, sources: Sequence, **extra) -> None:
    """Write a view (DESIGN §13) over shard sets: `sources` are (shard set folder,
    {shard name: [excluded keys]}) pairs, each excluded key with reason "duplicate"."""
    entries = []
    for root, excluded in sources:
        data = (root / "manifest.json").read_bytes()
        entries.append(
            {
                "uri": str(root / "manifest.json"),
                "sha256": hashlib.sha256(data).hexdigest(),
                "weight": 1.0,
                "excluded": {s: {k: "duplicate" for k in keys} for s, keys in excluded.items()},
            }
        )
    view = {"format": "musicoder-view", "format_version": 1, "sources": entries} | extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(view))


@pytest.fixture(scope="session")
def uneven_shard_set(tmp_path_factory) -> pathlib.Path:
    """Seven train shards with sizes that divide nothing evenly (42 clips)."""
    return write_shard_set(
        tmp_path_factory.mktemp("shards_uneven"), [11, 3, 7, 1, 9, 5, 6], frames=(20, 40), seed=2
    )


@pytest.fixture(scope="session")
def few_shard_set(tmp_path_factory) -> pathlib.Path:
    """Two train shards, fewer than 2 ranks x 2 workers (23 clips)."""
    return write_shard_set(tmp_path_factory.mktemp("shards_few"), [14, 9], frames=(20, 40), seed=3)


# ---------------------------------------------------------------------------------------------
# Pre-training runs with the real `deepspeed` launcher (2 CPU ranks on gloo), shared by tests.

REPO = pathlib.Path(__file__).resolve().parents[1]
DEEPSPEED = pathlib.Path(sys.executable).parent / "deepspeed"
RUN_TIMEOUT_S = 300
# A short, fast, learnable run: 16 steps, a checkpoint every 4 (2 kept), metrics every step.
RUN_SETTINGS = (
    "train.max_steps=16",
    "train.save_every=4",
    "train.keep_last=2",
    "train.log_every=1",
    "train.val_every=8",
    "train.image_every=8",
    "train.lr=3e-3",
    "train.warmup_steps=4",
    "train.micro_batch=4",
    "data.num_workers=1",
)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 for a launcher's master."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_command(
    out: pathlib.Path,
    manifest: str,
    *,
    zero: int = 2,
    procs: int | None = 2,
    settings: Sequence[str] = (),
    resume: bool = False,
) -> list[str]:
    """`deepspeed --num_gpus N launch/pretrain.py ...` (or plain python when procs is None)."""
    launcher = (
        [str(DEEPSPEED), "--num_gpus", str(procs), "--master_port", str(free_port())]
        if procs
        else [sys.executable]
    )
    sets = [f"data.manifest={manifest}", f"train.output_dir={out}", *RUN_SETTINGS, *settings]
    return [
        *launcher,
        str(REPO / "launch" / "pretrain.py"),
        "--config",
        str(REPO / "configs" / "pretrain" / "tiny-cpu.yaml"),
        "--deepspeed",
        str(REPO / "configs" / "deepspeed" / f"zero{zero}.json"),
        *[arg for item in sets for arg in ("--set", item)],
        *(["--resume", "auto"] if resume else []),
    ]


def run_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for launched runs: one thread per process, no inherited rank variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


def run_command(command: Sequence[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a launch script (pretrain, export) from the repo root to completion, output kept."""
    return subprocess.run(
        command, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout
    )


def allreduce_buffers(command: Sequence[str]) -> list[str]:
    """The /dev/shm all-reduce buffers of the DeepSpeed launch `command` (its --master_port)
    that still have a name: DeepSpeed's CPU shm all-reduce creates one per rank."""
    if "--master_port" not in command:
        return []
    port = command[list(command).index("--master_port") + 1]
    return sorted(str(p) for p in pathlib.Path("/dev/shm").glob(f"deepspeed_*_{port}_*"))


@dataclass
class PretrainRun:
    """A finished launch: its output dir, exit code, combined output and the /dev/shm buffers
    it left behind."""

    out: pathlib.Path
    returncode: int
    log: str
    shm_left: list[str]


def run_pretrain(
    out: pathlib.Path, manifest: str, *, env: dict[str, str] | None = None, **kwargs
) -> PretrainRun:
    """Run a pre-training launch to completion (see `pretrain_command` for kwargs)."""
    command = pretrain_command(out, manifest, **kwargs)
    proc = subprocess.run(
        command,
        cwd=REPO,
        env=run_env(env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return PretrainRun(out, proc.returncode, proc.stdout + proc.stderr, allreduce_buffers(command))


@pytest.fixture(scope="session")
def zero2_run(shard_set, tmp_path_factory) -> PretrainRun:
    """ZeRO-2, 2 ranks, local shards, 16 steps."""
    run = run_pretrain(tmp_path_factory.mktemp("zero2") / "run", str(shard_set), zero=2)
    assert run.returncode == 0, run.log[-3000:]
    return run


@pytest.fixture(scope="session")
def s3_shard_set(shard_set, s3_server) -> tuple[str, dict[str, str]]:
    """The even shard set copied to a bucket on the loopback S3 server: (URI, environment)."""
    from fixtures_s3 import ACCESS_KEY, REGION, s3_admin_client

    admin = s3_admin_client(s3_server)
    bucket = f"train-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=bucket)
    for path in sorted(shard_set.iterdir()):
        admin.upload_file(str(path), bucket, f"shards/{path.name}")
    env = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }
    return f"s3://{bucket}/shards", env


@pytest.fixture(scope="session")
def zero3_run(s3_shard_set, tmp_path_factory) -> PretrainRun:
    """ZeRO-3, 2 ranks, the same shards streamed from S3, same seed: same data as `zero2_run`."""
    uri, env = s3_shard_set
    run = run_pretrain(tmp_path_factory.mktemp("zero3") / "run", uri, zero=3, env=env)
    assert run.returncode == 0, run.log[-3000:]
    return run


def start_two_nodes(
    out: pathlib.Path,
    manifest: str,
    workdir: pathlib.Path,
    *,
    zero: int = 2,
    settings: Sequence[str] = (),
    resume: bool = False,
) -> list[subprocess.Popen]:
    """Start one `deepspeed --hostfile H --no_ssh --node_rank R` launcher per "node" of a
    hostfile that names this machine twice (one slot each): one 2-rank job over gloo, the way
    SLURM's `srun` starts it. Each launcher leads its own process group (a node to kill, stop
    or signal as a whole) and logs to `workdir/node<R>.log`. The caller stops them."""
    hostfile = workdir / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    # The script and its arguments as a single-process command would run them.
    _, *script = pretrain_command(
        out, manifest, zero=zero, procs=None, settings=settings, resume=resume
    )
    port = str(free_port())
    nodes = []
    for node in (0, 1):
        with open(workdir / f"node{node}.log", "w") as log:
            nodes.append(
                subprocess.Popen(
                    [
                        str(DEEPSPEED),
                        "--hostfile",
                        str(hostfile),
                        "--no_ssh",
                        "--node_rank",
                        str(node),
                        "--master_addr",
                        "127.0.0.1",
                        "--master_port",
                        port,
                        *script,
                    ],
                    cwd=REPO,
                    env=run_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return nodes


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher's whole process group (ranks and loader workers too) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
