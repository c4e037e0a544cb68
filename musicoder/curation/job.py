"""One curation run (DESIGN §11, §13): shard sets in, a view and a report out, no tar touched.

`run` reads each input's manifest and shard indexes (format v2: every sample's source, seconds,
PCM hash, fingerprint and quality statistics are there; up to 16 index reads in flight, taken
in order), optionally groups duplicate source files (`musicoder.curation.dedup`: by
fingerprint, and by PCM hash for files too short or too plain to fingerprint), keeps one copy
per group by :data:`KEEP_RULE`, applies the quality thresholds per sample, and writes
`view.json` (`format: musicoder-view`: each shard set by URI and sha256, the excluded keys per
shard with their reason) and `report.json` (`duplicate_groups`: lists of source URIs, kept copy
first; samples and hours removed per reason). A re-run with the same inputs and settings finds
the same outputs and leaves them as they are.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import tempfile
from collections import Counter
from array import array
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

import musicoder
from musicoder import storage
from musicoder.curation.config import CurateConfig
from musicoder.curation.dedup import Deduper, exact_groups, group_sources, merge_groups
from musicoder.curation.fingerprint import decode
from musicoder.shardset.format import (
    FACTS_FORMAT_VERSION,
    INDEX_SUFFIX,
    TAR_SUFFIX,
    VIEW_FORMAT,
    VIEW_FORMAT_VERSION,
    VIEW_NAME,
    ShardFormatError,
)
from musicoder.shardset.manifest import Manifest, read_manifest

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
REPORT_FORMAT = "musicoder-curation-report"
DUPLICATE, SILENCE, CLIPPED, QUIET = "duplicate", "silence", "clipped", "quiet"
REASONS = (DUPLICATE, SILENCE, CLIPPED, QUIET)  # a sample gets the first that applies
LOSSLESS = (".flac", ".wav", ".aif", ".aiff", ".w64", ".caf")
KEEP_RULE = (
    "per group of copies keep, among the copies within tie_seconds of the most audible seconds "
    "(seconds not near-silent), a lossless file over a lossy one, then the fewest silent "
    "seconds, then the lowest clipped fraction, then the smallest URI"
)


@dataclass
class CurateResult:
    """What one run did; `summary` is the one line the CLI prints."""

    view: str
    report: dict
    written: bool  # False: the outputs already held this result

    @property
    def summary(self) -> str:
        """One line: kept samples, removals per reason, groups, where the view is."""
        removed = ", ".join(
            f"{r} {v['samples']} ({v['hours']:.2f} h)" for r, v in self.report["removed"].items()
        )
        state = "wrote" if self.written else "up to date:"
        return (
            f"{state} {self.view}: kept {self.report['kept']['samples']} of "
            f"{self.report['input']['samples']} samples; removed {removed or 'nothing'}; "
            f"{len(self.report['duplicate_groups'])} duplicate groups"
        )


@dataclass
class _Samples:
    """Per-sample columns of all inputs, in read order (sample id = position): flat arrays, not
    a Python object per value (measured with real keys: 173 bytes a sample, key string
    included, against 404 for lists of tuples, floats and hex strings)."""

    shards: list[tuple[int, str, list[str]]] = field(default_factory=list)  # input, tar, keys
    shard: array = field(default_factory=lambda: array("q"))  # position in `shards`
    position: array = field(default_factory=lambda: array("q"))  # position in its shard's keys
    source: array = field(default_factory=lambda: array("q"))
    seconds: array = field(default_factory=lambda: array("d"))
    silent: array = field(default_factory=lambda: array("d"))
    clipped: array = field(default_factory=lambda: array("d"))
    loudness: array = field(default_factory=lambda: array("d"))
    pcm: bytearray = field(default_factory=bytearray)  # 32-byte SHA-256 digests

    def where(self, i: int) -> tuple[int, str, str]:
        """(input, shard tar name, key) of sample `i`."""
        n, name, keys = self.shards[self.shard[i]]
        return n, name, keys[self.position[i]]

    def pcm_digest(self, i: int) -> bytes:
        """Sample `i`'s PCM hash."""
        return bytes(self.pcm[32 * i : 32 * i + 32])


def run(cfg: CurateConfig, *, progress: bool = True) -> CurateResult:
    """Curate `cfg.inputs` into a view and a report under `cfg.output`.

    Raises:
        FileNotFoundError: an input shard set or one of its indexes is missing.
        ShardFormatError: an input is not a shard set of format v2 (no per-sample facts).
        ValueError: inputs with different feature presets.
    """
    manifests = [_read_input(uri) for uri in cfg.inputs]
    samples, sources = _Samples(), {}
    with tempfile.TemporaryDirectory(prefix="musicoder-curate-", dir=cfg.work_dir) as tmp:
        deduper = Deduper(cfg.match, tmp) if cfg.dedup else None
        shards = [(n, s) for n, m in enumerate(manifests) for s in [*m.train, *m.val]]
        indexes = storage.read_json_ahead(_index_uri(shard.uri) for _, shard in shards)
        for (n, shard), (_, index) in tqdm(
            zip(shards, indexes, strict=True),
            total=len(shards),
            desc="indexes",
            unit="shard",
            disable=not progress,
        ):
            _add_index(n, shard.uri, index, samples, sources, deduper)
        source_uris = [uri for _, uri in sorted((i, u) for u, i in sources.items())]
        reasons: dict[int, str] = {}
        groups = []
        if deduper is not None:
            matches = deduper.matches()
            if progress:
                matches = tqdm(matches, desc="matches", unit="pair")
            matchable = _per_source(
                samples, np.frombuffer(deduper.usable, dtype=np.uint8), len(source_uris)
            )
            sample_source = np.asarray(samples.source)
            found = merge_groups(
                group_sources(matches, sample_source, matchable, cfg.match.min_coverage),
                exact_groups(
                    sample_source,
                    np.frombuffer(samples.pcm, np.uint8).reshape(-1, 32),
                    len(source_uris),
                ),
            )
            groups = _keep(found, samples, source_uris, cfg.match.tie_seconds)
            dropped = {s for g in groups for s in g["sources"][1:]}
            for i, s in enumerate(samples.source):
                if s in dropped:
                    reasons[i] = DUPLICATE
            match_stats = {
                "candidate_pairs": deduper.candidates,
                "matching_pairs": deduper.verified,
                "unmatchable_samples": deduper.unmatchable,
            }
        else:
            match_stats = None
    _filter(cfg, samples, reasons)
    view = _view(cfg, manifests, samples, reasons)
    report = _report(cfg, manifests, samples, source_uris, groups, reasons, match_stats)
    return _publish(cfg.output, view, report)


def _read_input(uri: str) -> Manifest:
    manifest = read_manifest(uri)
    if manifest.sources:
        raise ShardFormatError(f"{manifest.uri}: a view; curate reads shard sets (their manifests)")
    if manifest.format_version < FACTS_FORMAT_VERSION:
        raise ShardFormatError(
            f"{manifest.uri}: shard format v{manifest.format_version} has no per-sample facts; "
            f"re-shard it with this version (v{FACTS_FORMAT_VERSION}) to curate it"
        )
    return manifest


def _index_uri(shard_uri: str) -> str:
    return shard_uri.removesuffix(TAR_SUFFIX) + INDEX_SUFFIX


def _add_index(
    n: int,
    shard_uri: str,
    index: dict,
    samples: _Samples,
    sources: dict,
    deduper: Deduper | None,
) -> None:
    """Appends one shard index's samples (input `n`) to `samples` and the deduper."""
    try:
        keys, facts = index["keys"], index["sample_facts"]
        if len(keys) != len(facts):
            raise ValueError(f"{len(keys)} keys but {len(facts)} sample_facts")
        shard = len(samples.shards)
        samples.shards.append((n, storage.basename(shard_uri), [str(key) for key in keys]))
        for position, fact in enumerate(facts):
            source = sources.setdefault((n, fact["source"]), len(sources))
            samples.shard.append(shard)
            samples.position.append(position)
            samples.source.append(source)
            samples.seconds.append(float(fact["seconds"]))
            samples.silent.append(float(fact["silent_fraction"]))
            samples.clipped.append(float(fact["clipped_fraction"]))
            samples.loudness.append(float(fact["loudness_dbfs"]))
            digest = bytes.fromhex(str(fact["pcm_sha256"]))
            if len(digest) != 32:
                raise ValueError(f"pcm_sha256 of {len(digest)} bytes")
            samples.pcm += digest
            if deduper is not None:
                deduper.add(decode(str(fact["fingerprint"])), source)
    except (KeyError, TypeError, ValueError) as exc:  # FingerprintError is a ValueError
        raise ShardFormatError(f"{_index_uri(shard_uri)}: malformed shard index ({exc})") from None


def _per_source(samples: _Samples, values: np.ndarray, count: int) -> np.ndarray:
    """Sum of a per-sample column over each source's samples, float64 `[sources]`."""
    return np.bincount(samples.source, weights=values.astype(np.float64), minlength=count)


def _keep(
    found: list[list[int]], samples: _Samples, uris: list[tuple[int, str]], tie_seconds: float
) -> list[dict]:
    """Order each group by :data:`KEEP_RULE` (kept copy first), with the facts it used."""
    seconds = np.asarray(samples.seconds)
    silent = _per_source(samples, seconds * np.asarray(samples.silent), len(uris))
    audible = _per_source(samples, seconds, len(uris)) - silent
    clipped = _per_source(samples, seconds * np.asarray(samples.clipped), len(uris))
    clipped /= np.maximum(_per_source(samples, seconds, len(uris)), 1e-9)
    hashes: dict[int, list[str]] = {}
    members = {s for g in found for s in g}
    for sample, source in enumerate(samples.source):
        if source in members:
            hashes.setdefault(source, []).append(samples.pcm_digest(sample))
    groups = []
    for group in found:
        longest = max(audible[s] for s in group)

        def rank(s: int, longest: float = longest) -> tuple:
            lossy = not uris[s][1].lower().endswith(LOSSLESS)
            return (audible[s] < longest - tie_seconds, lossy, silent[s], clipped[s], uris[s][1])

        ordered = sorted(group, key=rank)
        groups.append(
            {
                "sources": ordered,
                "exact": len({tuple(sorted(hashes[s])) for s in group}) == 1,
                "members": [
                    {
                        "uri": uris[s][1],
                        "input": uris[s][0],
                        "audible_seconds": round(float(audible[s]), 3),
                        "silent_seconds": round(float(silent[s]), 3),
                        "clipped_fraction": round(float(clipped[s]), 8),
                        "lossless": uris[s][1].lower().endswith(LOSSLESS),
                    }
                    for s in ordered
                ],
            }
        )
    return groups


def _filter(cfg: CurateConfig, samples: _Samples, reasons: dict[int, str]) -> None:
    """Quality thresholds, per sample; a sample keeps the first reason that applies."""
    tests = (
        (SILENCE, cfg.max_silence, samples.silent, lambda v, t: v > t),
        (CLIPPED, cfg.max_clipped, samples.clipped, lambda v, t: v > t),
        (QUIET, cfg.min_loudness_dbfs, samples.loudness, lambda v, t: v < t),
    )
    for reason, threshold, column, drop in tests:
        if threshold is None:
            continue
        for i, value in enumerate(column):
            if i not in reasons and drop(value, threshold):
                reasons[i] = reason


def _source_uri(manifest: Manifest) -> str:
    """How a view names a shard set: its manifest's URI, absolute when local."""
    return (
        str(storage.local_path(manifest.uri).resolve())
        if storage.is_local(manifest.uri)
        else manifest.uri
    )


def _view(
    cfg: CurateConfig, manifests: list[Manifest], samples: _Samples, reasons: dict[int, str]
) -> dict:
    excluded: list[dict[str, dict[str, str]]] = [{} for _ in manifests]
    for i in sorted(reasons):
        n, shard, key = samples.where(i)
        excluded[n].setdefault(shard, {})[key] = reasons[i]
    return {
        "format": VIEW_FORMAT,
        "format_version": VIEW_FORMAT_VERSION,
        "sources": [
            {"uri": _source_uri(m), "sha256": m.sha256, "weight": 1.0, "excluded": excluded[n]}
            for n, m in enumerate(manifests)
        ],
        "counts": {
            "samples": len(samples.source),
            "kept": len(samples.source) - len(reasons),
            "excluded": dict(sorted(Counter(reasons.values()).items())),
        },
        "curation": _settings(cfg),
        "code_version": musicoder.__version__,
        "created": _now(),
    }


def _settings(cfg: CurateConfig) -> dict:
    """The settings that decide the result (not where it goes or the scratch folder)."""
    settings = dataclasses.asdict(cfg)
    for key in ("output", "work_dir", "inputs"):
        settings.pop(key)
    return settings


def _report(
    cfg: CurateConfig,
    manifests: list[Manifest],
    samples: _Samples,
    uris: list[tuple[int, str]],
    groups: list[dict],
    reasons: dict[int, str],
    match_stats: dict | None,
) -> dict:
    hours = np.asarray(samples.seconds) / 3600.0
    removed = {}
    for reason in REASONS:
        ids = [i for i, r in reasons.items() if r == reason]
        if ids:
            removed[reason] = {"samples": len(ids), "hours": float(hours[ids].sum())}
    kept = [i for i in range(len(hours)) if i not in reasons]
    return {
        "format": REPORT_FORMAT,
        "format_version": 1,
        "inputs": [_source_uri(m) for m in manifests],
        "duplicate_groups": [[m["uri"] for m in g["members"]] for g in groups],
        "groups": [{"exact": g["exact"], "members": g["members"]} for g in groups],
        "keep_rule": KEEP_RULE if cfg.dedup else None,
        "input": {"samples": len(hours), "hours": float(hours.sum()), "sources": len(uris)},
        "kept": {"samples": len(kept), "hours": float(hours[kept].sum())},
        "removed": removed,
        "matching": match_stats,
        "curation": _settings(cfg),
        "created": _now(),
    }


def _publish(output: str, view: dict, report: dict) -> CurateResult:
    """Write the report, then the view (last: a view's presence means the run completed);
    leave both alone when they already hold this result (only `created` differs)."""
    view_uri, report_uri = storage.join(output, VIEW_NAME), storage.join(output, REPORT_NAME)
    if storage.exists(view_uri) and storage.exists(report_uri):
        old_view, old_report = storage.read_json(view_uri), storage.read_json(report_uri)
        if _same(old_view, view) and _same(old_report, report):
            log.info("%s: already holds this view; left untouched", view_uri)
            return CurateResult(view_uri, old_report, written=False)
    storage.write_json(report_uri, report)
    storage.write_json(view_uri, view)
    return CurateResult(view_uri, report, written=True)


def _same(old: dict, new: dict) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k != "created"}  # noqa: E731
    return json.loads(json.dumps(strip(new))) == strip(old)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
