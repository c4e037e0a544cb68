"""The curation job's root config (``CurateConfig``), free of heavy imports so that
``launch/curate.py --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MatchConfig:
    """How near-duplicate samples are found and when two source files count as copies.

    Attributes:
        bands: MinHash values per sample, one LSH band each; a pair sharing any band is verified
            (24: a 5 s-trimmed copy's segment, token Jaccard ~0.15, is a candidate with ~98%).
        partitions: LSH bucket records (16 bytes per band and sample) and then candidate pairs
            are spilled to this many files each on local disk and handled one file at a time:
            memory ~ 384 bytes x samples / partitions (64: ~60 MB a file at 10M samples).
        max_bucket: a bucket with more samples pairs each only with its next ``max_bucket``
            neighbours (sorted by sample), so a value shared by thousands of samples (stationary
            sound) costs linear, not quadratic, work.
        max_bit_error: two samples match when their Chromaprint fingerprints, aligned at the
            best offset, differ in at most this share of bits (unrelated music ~0.5; same
            instruments and tempo measured ~0.3; mp3 128k, trims, gain: < 0.1).
        min_overlap_seconds: aligned fingerprints must overlap by at least this much audio
            (informative frames only: silence and held tones do not count).
        min_coverage: two source files are copies when matched samples cover at least this share
            of the samples of the shorter one (of those with a usable fingerprint).
        tie_seconds: copies within this many audible seconds of the longest count as equally long
            when choosing the kept copy.
    """

    bands: int = 24
    partitions: int = 64
    max_bucket: int = 64
    max_bit_error: float = 0.2
    min_overlap_seconds: float = 5.0
    min_coverage: float = 0.5
    tie_seconds: float = 1.0

    def __post_init__(self) -> None:
        for key in ("bands", "partitions", "max_bucket"):
            if getattr(self, key) < 1:
                raise ValueError(f"match.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("max_bit_error", "min_coverage"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ValueError(f"match.{key}: must be in (0, 1], got {getattr(self, key)}")


@dataclass
class CurateConfig:
    """One curation run: inputs, what to drop, where the view goes (DESIGN §11, §13).

    Attributes:
        inputs: shard sets (folder, ``s3://`` prefix or ``manifest.json``), format v2.
        output: folder or ``s3://`` prefix that receives ``view.json`` and ``report.json``.
        dedup: drop all but one copy of each group of duplicate source files.
        max_silence: drop samples whose near-silent frame share exceeds this (None = keep).
        max_clipped: drop samples whose clipped-sample share exceeds this (None = keep).
        min_loudness_dbfs: drop samples quieter than this mean-square level (None = keep).
        work_dir: local scratch for the LSH partitions (None = the system temp folder).
    """

    inputs: list[str] = field(default_factory=list)
    output: str = ""
    dedup: bool = False
    max_silence: float | None = None
    max_clipped: float | None = None
    min_loudness_dbfs: float | None = None
    work_dir: str | None = None
    match: MatchConfig = field(default_factory=MatchConfig)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one shard set (--input)")
        if not self.output:
            raise ValueError("output: give a folder or s3:// prefix (--output)")
        for key in ("max_silence", "max_clipped"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key}: must be in [0, 1], got {value}")
