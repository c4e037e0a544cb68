"""A shard's index JSON (DESIGN §5) and its summary: what one finished shard holds.

Each shard task returns a :class:`ShardSummary` and writes the same facts (plus its sample keys,
frame counts and, from format v2, each sample's source and facts: PCM hash, fingerprint, quality
statistics) as the index JSON beside its tar, after the tar; a resumed job reads the summaries
of finished shards back from their indexes. Curation reads the per-sample facts from the
indexes alone, never the tars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Per sample in an index's "sample_facts" (format v2), aligned with "keys".
INDEX_FACT_FIELDS = (
    "source",
    "segment",
    "seconds",
    "pcm_sha256",
    "fingerprint",
    "loudness_dbfs",
    "silent_fraction",
    "clipped_fraction",
)


@dataclass(kw_only=True)
class ShardSummary:
    """What one finished shard holds; mirrors its index JSON without the per-sample lists."""

    name: str  # tar name, e.g. "shard-000000.tar"
    split: str
    samples: int
    frames: int
    seconds: float
    bytes: int
    sha256: str
    sum: list[float]  # float64 per-channel sum over all frames of the shard
    sumsq: list[float]
    count: int  # frames summed
    accepted: int
    rejected: int
    truncated: int
    rejects: list[dict] = field(default_factory=list)  # {"uri", "reason", "error"}
    task_seconds: float = 0.0  # wall time of the task; not part of the index (not deterministic)
    s3_retries: int = 0  # S3 requests retried and bodies re-opened by the task; not in the index

    def to_index(self, keys: list[str], sample_frames: list[int], sample_facts: list[dict]) -> dict:
        """The shard's index JSON (docs/shard-format.md); `sample_facts` holds one dict of
        :data:`INDEX_FACT_FIELDS` per key."""
        return {
            "name": self.name,
            "split": self.split,
            "samples": self.samples,
            "frames": self.frames,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "keys": keys,
            "sample_frames": sample_frames,
            "sample_facts": sample_facts,
            "sum": self.sum,
            "sumsq": self.sumsq,
            "count": self.count,
            "files": {
                "accepted": self.accepted,
                "rejected": self.rejected,
                "truncated": self.truncated,
            },
            "rejects": self.rejects,
        }

    @classmethod
    def from_index(cls, index: dict) -> ShardSummary:
        """Rebuild a summary from a shard index read back from storage.

        Raises:
            ValueError: a required field is missing.
        """
        try:
            files = index["files"]
            return cls(
                name=index["name"],
                split=index["split"],
                samples=index["samples"],
                frames=index["frames"],
                seconds=index["seconds"],
                bytes=index["bytes"],
                sha256=index["sha256"],
                sum=index["sum"],
                sumsq=index["sumsq"],
                count=index["count"],
                accepted=files["accepted"],
                rejected=files["rejected"],
                truncated=files["truncated"],
                rejects=index["rejects"],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"shard index {index.get('name', '?')}: missing field {e}") from None
