"""Duplicate detection at corpus scale in bounded memory: LSH buckets spilled to disk, verified
by aligned fingerprints, then grouped per source file (DESIGN §13).

`Deduper.add` takes samples one at a time: it appends the decoded fingerprint to a flat file on
local disk (read back through a memmap, so resident memory does not grow with the corpus) and
the sample's MinHash records (band key, sample, frame; 16 bytes each) to one of `partitions`
files chosen by key hash. `Deduper.matches` then works in two passes, each over one partition
file at a time. First it sorts each record partition by key (numpy): every run of equal keys is
an LSH bucket whose members become candidate pairs (each member with its next `max_bucket`
neighbours), spilled as (pair, offset) records to pair partitions by pair. Then it sorts each
pair partition, keeps each pair's first occurrence (a pair shares several bands), and verifies
it once by the bit error rate of the two fingerprints aligned at the offset its shared frames
imply, thousands of pairs per numpy call (`best_rates`). Memory is one partition of either
kind, never a set of all pairs: chance candidates grow with the square of the corpus (0.3M at
1M samples, ~30M at 10M), so an in-memory set of checked pairs would not be bounded. Disk is
~1 kB per 30 s sample plus 12 bytes a candidate.

`group_sources` turns verified sample matches into groups of source files: two files are copies
when matched samples cover `min_coverage` of the shorter one (a 30 s excerpt of a track counts),
and groups are the connected components (union-find). `exact_groups` finds files that decode to
the same samples from their PCM hashes alone, fingerprint or not (a jingle shorter than
`min_overlap_seconds`, a tone); `merge_groups` joins both kinds.
"""

from __future__ import annotations

import os
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np

from musicoder.curation.config import MatchConfig
from musicoder.curation.fingerprint import FRAME_SECONDS, band_seeds, best_rates, minhash

RECORD = np.dtype([("key", "<u8"), ("sample", "<u4"), ("frame", "<i4")])
# A candidate: pair = i << 32 | j (`_pair_samples` splits it), offset = frame_i - frame_j.
PAIR = np.dtype([("pair", "<u8"), ("offset", "<i4")])
VERIFY_BATCH = 4096  # candidate pairs verified together (`best_rates`)
VERIFY_CELLS = 1 << 21  # at most this many frames per row x rows in one batch
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

    def _pairs_path(self, p: int) -> str:
        return os.path.join(self.work_dir, f"pairs-{p:04d}.rec")

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
        self._spill_candidates(sources)
        path = self._values.name
        values = np.memmap(path, np.uint32, "r") if offsets[-1] else np.zeros(0, np.uint32)
        lengths = np.diff(offsets)
        for p in range(self.config.partitions):
            pairs = _first_of_each_pair(_read_and_remove(self._pairs_path(p), PAIR))
            self.candidates += len(pairs)
            i, j = _pair_samples(pairs)
            longest = int(max(lengths[i].max(initial=1), lengths[j].max(initial=1)))
            batch = max(1, min(VERIFY_BATCH, VERIFY_CELLS // longest))
            for start in range(0, len(pairs), batch):
                part = slice(start, start + batch)
                rates = best_rates(
                    values, offsets, i[part], j[part], pairs["offset"][part], self.min_frames
                )
                for k in np.flatnonzero(rates <= self.config.max_bit_error).tolist():
                    self.verified += 1
                    yield int(i[part][k]), int(j[part][k])

    def _spill_candidates(self, sources: np.ndarray) -> None:
        """First pass: each record partition's bucket pairs of samples from different sources,
        appended to the pair partitions (by `j`, spread evenly: sample ids are sequential)."""
        for p in range(self.config.partitions):
            records = _read_and_remove(self._partition_path(p), RECORD)
            records = records[np.lexsort((records["sample"], records["key"]))]
            pairs = bucket_pairs(records, self.config.max_bucket)
            i, j = _pair_samples(pairs)
            pairs = pairs[sources[i] != sources[j]]
            part = pairs["pair"] % np.uint64(self.config.partitions)
            for q in np.unique(part):
                with open(self._pairs_path(int(q)), "ab") as f:
                    pairs[part == q].tofile(f)


def _pair_samples(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples `(i, j)` of `PAIR` records, `int64` each."""
    i = (pairs["pair"] >> np.uint64(32)).astype(np.int64)
    return i, (pairs["pair"] & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _read_and_remove(path: str, dtype: np.dtype) -> np.ndarray:
    """A partition file's records (none when it does not exist); the file is deleted, as each
    is read once."""
    if not os.path.exists(path):
        return np.zeros(0, dtype)
    records = np.fromfile(path, dtype)
    os.remove(path)
    return records


def _first_of_each_pair(pairs: np.ndarray) -> np.ndarray:
    """Each distinct pair once, with the offset of its first occurrence (stable sort)."""
    pairs = pairs[np.argsort(pairs["pair"], kind="stable")]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pairs["pair"][1:] != pairs["pair"][:-1]
    return pairs[first]


def bucket_pairs(records: np.ndarray, window: int) -> np.ndarray:
    """Candidate pairs of records sorted by (key, sample): each member of a run of equal keys
    with its next `window` members, as `PAIR` records (`i < j`, offset `frame_i - frame_j`).

    Vectorized by distance: records `x` and `x + d` are in one bucket exactly when their keys
    are equal, since equal keys are contiguous; most buckets hold one or two samples, so the
    loop over `d` stops after a few rounds.
    """
    keys, found = records["key"], []
    for d in range(1, window + 1):
        x = np.flatnonzero(keys[d:] == keys[:-d]) if len(keys) > d else np.zeros(0, np.int64)
        if not len(x):
            break
        a, b = records[x], records[x + d]
        keep = a["sample"] != b["sample"]
        pairs = np.empty(int(keep.sum()), PAIR)
        pairs["pair"] = (a["sample"][keep].astype(np.uint64) << np.uint64(32)) | b["sample"][
            keep
        ].astype(np.uint64)
        pairs["offset"] = a["frame"][keep] - b["frame"][keep]
        found.append(pairs)
    return np.concatenate(found) if found else np.zeros(0, PAIR)


def _components(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the ids joined by `pairs` (union-find over the ids that occur
    in a pair only), each sorted, sorted by their first id."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s, t in pairs:
        parent[root(s)] = root(t)
    groups: dict[int, list[int]] = defaultdict(list)
    for s in list(parent):
        groups[root(s)].append(s)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


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

    def copies() -> Iterator[tuple[int, int]]:
        for (s, t), (on_s, on_t) in covered.items():
            shorter, hits = (s, on_s) if matchable[s] <= matchable[t] else (t, on_t)
            if matchable[shorter] and len(hits) / matchable[shorter] >= min_coverage:
                yield s, t

    return _components(copies())


def exact_groups(sample_source: np.ndarray, digests: np.ndarray, count: int) -> list[list[int]]:
    """Groups of source files whose samples have the same PCM hashes (the same decoded audio).

    Each source gets a key, the sum of its samples' 256-bit hashes as four 64-bit words (mod
    2**64) and its sample count: one sort of `count` keys finds the candidates, and each
    candidate group is confirmed by comparing its members' sorted hashes, so a key collision
    never groups two different files. Memory: ~100 bytes a source while it runs.

    Args:
        sample_source: source id of each sample, `[samples]`.
        digests: each sample's SHA-256 of its decoded PCM, `[samples, 32]` uint8.
        count: number of sources.

    Returns:
        Groups of two or more source ids (each sorted), sorted by their first id.
    """
    sample_source = np.asarray(sample_source, dtype=np.int64)
    words = np.ascontiguousarray(digests).view("<u8").reshape(-1, 4)
    keys = np.zeros((count, 4), np.uint64)
    for w in range(4):  # bincount sums in float64 (inexact above 2**53): add words in uint64
        np.add.at(keys[:, w], sample_source, words[:, w])
    sizes = np.bincount(sample_source, minlength=count)
    order = np.lexsort((*keys.T[::-1], sizes))
    ordered = np.column_stack([sizes[order].astype(np.uint64), keys[order]])
    same = (ordered[1:] == ordered[:-1]).all(axis=1) & (sizes[order][1:] > 0)
    runs: list[list[int]] = []
    for i in np.flatnonzero(same):
        if runs and runs[-1][-1] == order[i]:
            runs[-1].append(int(order[i + 1]))
        else:
            runs.append([int(order[i]), int(order[i + 1])])
    if not runs:
        return []
    members = np.concatenate([np.asarray(r) for r in runs])
    picked = np.flatnonzero(np.isin(sample_source, members))
    hashes: dict[int, list[bytes]] = defaultdict(list)
    for i in picked:
        hashes[int(sample_source[i])].append(digests[i].tobytes())
    pairs = (
        (run[0], s) for run in runs for s in run[1:] if sorted(hashes[s]) == sorted(hashes[run[0]])
    )
    return _components(pairs)


def merge_groups(*groupings: list[list[int]]) -> list[list[int]]:
    """The union of several groupings of the same ids: groups that share an id are joined."""
    return _components((g[0], s) for groups in groupings for g in groups for s in g[1:])
