"""Dedup at scale with synthetic fingerprints: time, peak memory and recall of planted copies.

Run from the repository root (1M samples: a few minutes on 2 cores):

    .venv/bin/python bench/dedup.py [--samples 1000000] [--copies 0.01]

Feeds `musicoder.curation.dedup.Deduper` (the code `launch/curate.py` runs) `--samples`
synthetic 30 s fingerprints (221 random 32-bit Chromaprint-like values each, one source file
per sample), of which a `--copies` share are planted near-copies of an earlier sample: shifted
by 0-40 frames (a trim of up to 5 s) with 3% of their bits flipped (above what a 128 kbit/s
MP3 flips, 0.3-0.4%). Reports wall and CPU seconds of the two phases (add: MinHash + spill to
partition files; match: per-partition sort, candidate verification), peak resident memory
(and peak anonymous memory, sampled: `ru_maxrss` also counts the memmapped file's pages),
local disk used, and recall/precision of the planted pairs among the matches. The reference in
the same run: decoding the same number of stored (base64) fingerprints, which `launch/curate.py`
must do anyway (measured on 20,000 and scaled). Then the exact-copy grouping by PCM hash
(`exact_groups`) on the same number of random 32-byte digests, the same share of them planted
byte copies: its CPU seconds and recall. Prints one JSON line.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import datetime
import json
import resource
import tempfile
import threading
import time

import chromaprint
import numpy as np

from musicoder.curation.config import MatchConfig
from musicoder.curation.dedup import Deduper, exact_groups

FRAMES = 221  # a 30 s segment
MAX_SHIFT = 40  # frames (~5 s)
FLIP = 0.03
CHUNK = 20_000
REFERENCE = 20_000  # fingerprints decoded for the reference time


def _chunks(samples: int, copies: float, seed: int):
    """Yield (fingerprints list, planted pairs) per chunk; copies refer to earlier samples."""
    rng = np.random.default_rng(seed)
    base = 0
    while base < samples:
        n = min(CHUNK, samples - base)
        values = rng.integers(0, 2**32, size=(n, FRAMES), dtype=np.uint32)
        prints, planted = [values[i] for i in range(n)], []
        for i in np.flatnonzero(rng.random(n) < copies):
            j = int(rng.integers(0, n))
            if j == i:
                continue
            shift = int(rng.integers(0, MAX_SHIFT))
            flips = rng.random((FRAMES - shift, 32)) < FLIP
            mask = (flips * (1 << np.arange(32, dtype=np.uint64))).sum(1).astype(np.uint32)
            prints[i] = values[j][shift:] ^ mask
            planted.append((min(i, j) + base, max(i, j) + base))
        yield prints, planted
        base += n


def _rss_mb() -> dict[str, int]:
    """Resident memory by kind (Linux /proc; empty elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            rows = dict(line.split(":", 1) for line in f if line.startswith("Rss"))
    except OSError:
        return {}
    return {k: int(v.split()[0]) // 1024 for k, v in rows.items()}


class _PeakAnon:
    """Samples the process's anonymous resident memory every `period` s in a thread: the
    memory dedup holds, which `ru_maxrss` mixes with the memmapped file's page cache."""

    def __init__(self, period: float = 0.2) -> None:
        self.peak_mb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.peak_mb = max(self.peak_mb, _rss_mb().get("RssAnon", 0))

    def __enter__(self) -> "_PeakAnon":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _exact(samples: int, copies: float, seed: int) -> dict:
    """`exact_groups` over `samples` one-sample sources whose random PCM digests include
    `copies * samples` byte copies of earlier ones: CPU seconds, and the share of copies grouped
    with their original (recall) and of grouped samples that are a copy or an original."""
    rng = np.random.default_rng(seed + 2)
    digests = rng.integers(0, 256, (samples, 32), dtype=np.uint8)
    n = int(samples * copies)
    copy = rng.choice(np.arange(1, samples), n, replace=False)
    original = (rng.random(n) * copy).astype(np.int64)  # an earlier sample (maybe a copy)
    for c, o in sorted(zip(copy.tolist(), original.tolist(), strict=True)):
        digests[c] = digests[o]  # in order: a copy of a copy gets the first one's digest
    cpu0 = time.process_time()
    groups = exact_groups(np.arange(samples), digests, samples)
    cpu = time.process_time() - cpu0
    group_of = {s: k for k, g in enumerate(groups) for s in g}
    hits = sum(
        1 for c, o in zip(copy, original, strict=True) if group_of.get(c, -1) == group_of.get(o, -2)
    )
    planted = set(copy.tolist()) | set(original.tolist())
    return {
        "cpu_s": round(cpu, 1),
        "copies": n,
        "recall": round(hits / max(n, 1), 4),
        "precision": round(len(planted & group_of.keys()) / max(len(group_of), 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--copies", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sample = next(_chunks(REFERENCE, 0.0, args.seed + 1))[0]
    stored = [chromaprint.encode_fingerprint(v.astype(np.int32).tolist(), 1) for v in sample]
    cpu0 = time.process_time()
    for text in stored:
        chromaprint.decode_fingerprint(text)
    decode_cpu = (time.process_time() - cpu0) * args.samples / len(stored)
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp, _PeakAnon() as anon:
        deduper = Deduper(MatchConfig(), tmp)
        planted: set[tuple[int, int]] = set()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for prints, pairs in _chunks(args.samples, args.copies, args.seed):
            for values in prints:
                deduper.add(values, source=len(deduper.usable))
            planted.update(pairs)
        add_cpu, add_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        disk = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        found = set(deduper.matches())
        match_cpu, match_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rss = _rss_mb()
    hits = len(found & planted)
    exact = _exact(args.samples, args.copies, args.seed)
    result = {
        "bench": "dedup",
        "date": datetime.date.today().isoformat(),
        "samples": args.samples,
        "planted_pairs": len(planted),
        "recall": round(hits / max(len(planted), 1), 4),
        "precision": round(hits / max(len(found), 1), 4),
        "candidate_pairs": deduper.candidates,
        "add_s": {"cpu": round(add_cpu, 1), "wall": round(add_wall, 1)},
        "match_s": {"cpu": round(match_cpu, 1), "wall": round(match_wall, 1)},
        "decode_cpu_s": round(decode_cpu, 1),
        "dedup_over_decode": round((add_cpu + match_cpu) / decode_cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_end_mb": rss,  # anonymous vs file-backed (the memmapped fingerprints, evictable)
        "peak_anon_mb": anon.peak_mb,  # sampled every 0.2 s
        "disk_mb": round(disk / 1e6),
        "exact": exact,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
