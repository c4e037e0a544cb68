"""Duplicate detection at corpus scale in bounded memory: LSH buckets spilled to disk, verified
by aligned fingerprints, then grouped per source file (DESIGN §13).

`Deduper.add` takes samples one at a time: it appends the decoded fingerprint to a flat file on
local disk (read back through a memmap, so resident memory does not grow with the corpus) and
the sample's MinHash records (band key, sample, frame; 16 bytes each) to one of `partitions`
files chosen by key hash. `Deduper.matches` then loads one partition at a time, sorts it by key
(numpy), and every run of equal keys is an LSH bucket whose members become candidate pairs
(each member with its next `max_bucket` neighbours). Each candidate is verified once by the
bit error rate of the two fingerprints aligned at the offset its shared frames imply. Memory is
one partition of records plus the set of checked pairs; disk is ~1 kB per 30 s sample.

`group_sources` turns verified sample matches into groups of source files: two files are copies
when matched samples cover `min_coverage` of the shorter one (a 30 s excerpt of a track counts),
and groups are the connected components (union-find).
"""

from __future__ import annotations

import os
from array import array
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from musicoder.curation.config import MatchConfig
from musicoder.curation.fingerprint import FRAME_SECONDS, band_seeds, best_alignment, minhash

RECORD = np.dtype([("key", "<u8"), ("sample", "<u4"), ("frame", "<i4")])
FLUSH_RECORDS = 1 << 18  # records buffered in memory before they go to the partition files
_BAND_SHIFT = np.uint64(56)  # the band number occupies a key's top 8 bits


class Deduper:
    """Collects samples' fingerprints, then yields verified matching sample pairs."""

    def __init__(self, config: MatchConfig, work_dir: str) -> None:
        self.config, self.work_dir = config, work_dir
        self.seeds = band_seeds(config.bands)
        self.min_frames = max(1, round(config.min_overlap_seconds / FRAME_SECONDS))
        self._values = open(os.path.join(work_dir, "fingerprints.u32"), "wb")  # noqa: SIM115
        # Compact per-sample columns (8 + 8 + 1 bytes a sample), not lists of Python ints.
        self._offsets = array("q", [0])
        self._sources = array("q")
        self.usable = bytearray()  # per sample: 1 if it has enough informative frames to match
        self._buffer = np.empty(FLUSH_RECORDS, RECORD)
        self._buffered = 0
        self.unmatchable = 0  # samples without enough informative frames
        self.candidates = 0  # distinct candidate pairs verified
        self.verified = 0  # of those, matches

    def add(self, values: np.ndarray, source: int) -> bool:
        """Register the next sample (ids count from 0) by its decoded fingerprint `uint32
        [frames]` (`fingerprint.decode`); returns False if it cannot be matched."""
        sample = len(self._sources)
        self._values.write(np.ascontiguousarray(values, dtype=np.uint32).tobytes())
        self._offsets.append(self._offsets[-1] + len(values))
        self._sources.append(source)
        signature = minhash(values, self.seeds)
        self.usable.append(signature is not None)
        if signature is None:
            self.unmatchable += 1
            return False
        hashes, frames = signature
        if self._buffered + len(hashes) > len(self._buffer):
            self._flush()
        chunk = self._buffer[self._buffered : self._buffered + len(hashes)]
        bands = np.arange(len(hashes), dtype=np.uint64)
        chunk["key"] = (hashes >> np.uint64(8)) | (bands << _BAND_SHIFT)
        chunk["sample"], chunk["frame"] = sample, frames
        self._buffered += len(hashes)
        return True

    def _partition_path(self, p: int) -> str:
        return os.path.join(self.work_dir, f"lsh-{p:04d}.rec")

    def _flush(self) -> None:
        records = self._buffer[: self._buffered]
        part = records["key"] % np.uint64(self.config.partitions)
        for p in np.unique(part):
            with open(self._partition_path(int(p)), "ab") as f:
                records[part == p].tofile(f)
        self._buffered = 0

    def matches(self) -> Iterator[tuple[int, int]]:
        """Verified matching pairs `(i, j)`, `i < j`, of samples from different sources, each
        once. Call after the last `add`."""
        self._flush()
        self._values.close()
        offsets = np.frombuffer(self._offsets, dtype=np.int64)
        sources = np.frombuffer(self._sources, dtype=np.int64)
        path = self._values.name
        values = np.memmap(path, np.uint32, "r") if offsets[-1] else np.zeros(0, np.uint32)
        checked: set[tuple[int, int]] = set()
        for p in range(self.config.partitions):
            if not os.path.exists(self._partition_path(p)):
                continue
            records = np.fromfile(self._partition_path(p), RECORD)
            records = records[np.lexsort((records["sample"], records["key"]))]
            for i, j, offset in _bucket_pairs(records, self.config.max_bucket):
                if sources[i] == sources[j] or (i, j) in checked:
                    continue
                checked.add((i, j))
                self.candidates += 1
                a = values[offsets[i] : offsets[i + 1]]
                b = values[offsets[j] : offsets[j + 1]]
                rate, _, _ = best_alignment(a, b, offset, self.min_frames)
                if rate <= self.config.max_bit_error:
                    self.verified += 1
                    yield i, j


def _bucket_pairs(records: np.ndarray, window: int) -> Iterator[tuple[int, int, int]]:
    """`(i, j, frame_i - frame_j)` for members of each run of equal keys (sorted by sample),
    each paired with its next `window` members."""
    keys = records["key"]
    if len(keys) < 2:
        return
    same = keys[1:] == keys[:-1]
    starts = np.flatnonzero(same & ~np.concatenate([[False], same[:-1]]))
    for start in starts:
        stop = start + 1
        while stop < len(keys) and keys[stop] == keys[start]:
            stop += 1
        samples, frames = records["sample"][start:stop], records["frame"][start:stop]
        for x in range(len(samples)):
            for y in range(x + 1, min(len(samples), x + 1 + window)):
                if samples[x] != samples[y]:
                    yield int(samples[x]), int(samples[y]), int(frames[x]) - int(frames[y])


def group_sources(
    matches: Iterator[tuple[int, int]],
    sample_source: np.ndarray,
    matchable: np.ndarray,
    min_coverage: float,
) -> list[list[int]]:
    """Groups of source files that are copies of each other.

    Args:
        matches: verified sample pairs (from :meth:`Deduper.matches`).
        sample_source: source id of each sample, `[samples]`.
        matchable: per source, its samples with a usable fingerprint, `[sources]`.
        min_coverage: share of the shorter source's matchable samples that must be matched.

    Returns:
        Groups of two or more source ids (each sorted), sorted by their first id.
    """
    covered: dict[tuple[int, int], tuple[set[int], set[int]]] = defaultdict(lambda: (set(), set()))
    for i, j in matches:
        s, t = int(sample_source[i]), int(sample_source[j])
        if s > t:
            s, t, i, j = t, s, j, i
        covered[s, t][0].add(i)
        covered[s, t][1].add(j)
    parent = list(range(len(matchable)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (s, t), (on_s, on_t) in covered.items():
        shorter, hits = (s, on_s) if matchable[s] <= matchable[t] else (t, on_t)
        if matchable[shorter] and len(hits) / matchable[shorter] >= min_coverage:
            parent[root(s)] = root(t)
    groups: dict[int, list[int]] = defaultdict(list)
    for s in {x for pair in covered for x in pair}:
        groups[root(s)].append(s)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])
