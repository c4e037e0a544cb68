"""Sharding benchmark: whole-job throughput against the decode+features limit, and scaling.

Command (from the repository root):
    .venv/bin/python bench/shard.py                 # defaults below; prints one JSON line
    .venv/bin/python bench/shard.py --base-files 30 --track-seconds 30   # a quick look

Corpus: ``--tracks`` demo-corpus tracks of ``--track-seconds`` (44.1 kHz mono 16-bit WAV),
hard-linked under distinct names to ``base-files`` x {1, 2, 4} files (the sharder dedupes by
real path, so hard links count as distinct inputs; no extra disk). One local Ray with ``--cpus``
CPUs is started here and every job joins it as a subprocess driver (``launch/shard.py`` with
``RAY_ADDRESS``), as a ``ray job submit`` driver would; the cluster start is reported apart.

- ``limit``: decode + features only, in a tight loop (one thread, batches of ``batch``
  segments like the worker), over the 1x files: audio hours per CPU hour. Measured with
  ``--cpus`` loops running at once (the job's parallelism: concurrent processes share caches and,
  on small VMs, SMT siblings, which costs CPU time per unit of work) and, for reference, alone.
- ``job``: the whole job (driver start, listing, plan, Ray tasks, tars, indexes, manifest):
  audio hours per CPU hour, CPU = user+sys of every process of the job (driver, Ray workers,
  raylet/GCS), sampled every ``POLL_S``. ``ratio`` = job / limit (target >= 0.8).
- ``scaling``: wall time, CPU time and driver peak RSS at 1x, 2x, 4x (target: time
  proportional to size, driver RSS flat); ``marginal_ratio`` uses the CPU added from 1x to 4x.

CPU time, not wall time, is the stable measure on a shared machine; wall time is also printed.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import concurrent.futures
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicoder.audio import iter_segments
from musicoder.demo_corpus import render_track
from musicoder.features import extract_features

POLL_S = 0.2
NATIVE_RATE = 44100
GENRES = ("rock", "jazz", "electronic", "classical")
SCALES = (1, 2, 4)


def render_sources(folder: Path, tracks: int, seconds: float) -> list[Path]:
    from musicoder.demo_corpus.styles import GENRES as KNOWN  # noqa: PLC0415

    genres = [g for g in GENRES if g in KNOWN] or list(KNOWN)
    paths = []
    for i in range(tracks):
        audio, _ = render_track(genres[i % len(genres)], i, seconds, NATIVE_RATE)
        paths.append(folder / f"src{i:02d}.wav")
        sf.write(paths[-1], audio, NATIVE_RATE, subtype="PCM_16")
    return paths


def link_corpus(folder: Path, sources: list[Path], n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        os.link(sources[i % len(sources)], folder / f"t{i:06d}.wav")
    return folder


def limit(files: list[Path], segment_seconds: float, batch: int) -> tuple[float, float]:
    """Decode + features in a tight loop, one thread: (audio seconds, CPU seconds)."""
    torch.set_num_threads(1)
    extract_features(torch.zeros(1, 22050))  # kernels built outside the timing
    seconds, cpu0 = 0.0, time.process_time()
    for path in files:
        pending = []
        for seg in iter_segments(str(path), segment_seconds):
            if pending and seg.samples.numel() != pending[0].numel():
                extract_features(torch.stack(pending))
                pending = []
            pending.append(seg.samples)
            seconds += seg.samples.numel() / 22050
            if len(pending) == batch:
                extract_features(torch.stack(pending))
                pending = []
        if pending:
            extract_features(torch.stack(pending))
    return seconds, time.process_time() - cpu0


def parallel_limit(files: list[Path], procs: int, segment_seconds: float, batch: int) -> float:
    """The limit with ``procs`` loops running at once, as the job's workers do: audio h / CPU h.

    Concurrent processes share caches (and SMT siblings on small VMs), which raises CPU time per
    unit of work; measuring the limit at the job's parallelism keeps the comparison fair.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        shares = [files[i::procs] for i in range(procs)]
        results = list(pool.map(limit, shares, [segment_seconds] * procs, [batch] * procs))
    return sum(s for s, _ in results) / sum(c for _, c in results)


class CpuTracker:
    """Sum of user+sys CPU of this process's descendants (dead ones keep their last sample)."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, float], float] = {}
        self._me = psutil.Process()

    def poll(self) -> None:
        for p in self._me.children(recursive=True):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self._last[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                continue

    def total(self) -> float:
        return sum(self._last.values())


def run_job(corpus: Path, out: Path, gcs: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "launch" / "shard.py"),
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--no-progress",
        "--segment-seconds",
        str(args.segment_seconds),
        "--shard-size",
        str(args.shard_mb),
        "--set",
        f"batch_segments={args.batch}",
    ]
    env = dict(os.environ, RAY_ADDRESS=gcs)
    tracker = CpuTracker()
    tracker.poll()
    before = tracker.total()
    start = time.perf_counter()
    driver = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak_rss = 0
    while driver.poll() is None:
        tracker.poll()
        try:
            peak_rss = max(peak_rss, psutil.Process(driver.pid).memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    time.sleep(1.0)  # let the job's workers finish their last CPU sample
    tracker.poll()
    stdout, stderr = driver.communicate()
    if driver.returncode != 0:
        raise RuntimeError(f"job failed ({driver.returncode}): {stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    hours = manifest["counts"]["hours"]
    cpu = tracker.total() - before
    return {
        "files": manifest["counts"]["inputs"],
        "audio_hours": hours,
        "wall_s": wall,
        "cpu_s": cpu,
        "audio_h_per_cpu_h": hours * 3600 / cpu,
        "driver_peak_rss_mb": peak_rss / 2**20,
        "shards": len(manifest["train"]) + len(manifest["val"]),
        "summary": stdout.strip()[-300:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=8, help="distinct rendered tracks")
    parser.add_argument("--track-seconds", type=float, default=60.0)
    parser.add_argument("--base-files", type=int, default=240, help="files at 1x")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--segment-seconds", type=float, default=30.0)
    parser.add_argument("--shard-mb", type=float, default=16.0, help="small enough for many tasks")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import ray  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    try:
        sources = render_sources(work, args.tracks, args.track_seconds)
        base = link_corpus(work / "x1", sources, args.base_files)
        files = sorted(base.iterdir())
        seconds, cpu = limit(files, args.segment_seconds, args.batch)
        limit_1 = seconds / cpu
        limit_c = parallel_limit(files, args.cpus, args.segment_seconds, args.batch)
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        cluster_start = time.perf_counter() - start
        gcs = ray.get_runtime_context().gcs_address
        scaling = {}
        for k in SCALES:
            corpus = base if k == 1 else link_corpus(work / f"x{k}", sources, args.base_files * k)
            scaling[f"{k}x"] = run_job(corpus, work / f"out{k}", gcs, args)
            shutil.rmtree(work / f"out{k}")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, four = scaling["1x"], scaling["4x"]
    marginal = (four["audio_hours"] - one["audio_hours"]) * 3600 / (four["cpu_s"] - one["cpu_s"])
    rounded = {
        k: {f: round(v, 3) if isinstance(v, float) else v for f, v in s.items() if f != "summary"}
        for k, s in scaling.items()
    }
    print(
        json.dumps(
            {
                "bench": "shard",
                "cpus": args.cpus,
                "cluster_start_s": round(cluster_start, 1),
                "limit_audio_h_per_cpu_h": round(
                    limit_c, 1
                ),  # decode+features, `cpus` loops at once
                "limit_single_process_audio_h_per_cpu_h": round(limit_1, 1),
                "job_audio_h_per_cpu_h": round(four["audio_h_per_cpu_h"], 1),  # whole job at 4x
                "ratio": round(four["audio_h_per_cpu_h"] / limit_c, 3),
                "marginal_ratio": round(marginal / limit_c, 3),  # CPU added from 1x to 4x
                "ratio_vs_single_process_limit": round(four["audio_h_per_cpu_h"] / limit_1, 3),
                "time_ratio_4x_over_1x": round(four["cpu_s"] / one["cpu_s"], 2),
                "rss_ratio_4x_over_1x": round(
                    four["driver_peak_rss_mb"] / one["driver_peak_rss_mb"], 2
                ),
                "scaling": rounded,
            }
        )
    )


if __name__ == "__main__":
    main()
