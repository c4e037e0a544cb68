"""Shard format v2 (DESIGN §5, §13): every name, version and key that writers and readers share.

A shard set is a folder or `s3://` prefix holding `plan.json` (written first), `shard-NNNNNN.tar`
and `val-NNNNNN.tar` with one index JSON beside each, `rejects.jsonl` and `manifest.json`
(written last: its presence means the set is complete). A sample is the tar members
`<key>.feat.npy` (float16 `(frames, C)`), `<key>.json` (source, segment, preset, ...) and
optionally `<key>.flac`, in that order. Keys have no dots (webdataset cuts keys at the first dot)
and are the same on every run.

Version 2 adds per-sample facts (PCM hash, fingerprint, quality statistics) to each sample's
JSON and the shard index, and nothing else: readers accept v1 and v2 alike (curation needs v2).
A view (`format: musicoder-view`, `view.json`) selects samples of one or more shard sets.
"""

from __future__ import annotations

import hashlib

SHARD_FORMAT = "musicoder-shards"
SHARD_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
FACTS_FORMAT_VERSION = 2  # the first version with per-sample facts
MANIFEST_NAME = "manifest.json"
VIEW_FORMAT = "musicoder-view"
VIEW_FORMAT_VERSION = 1
VIEW_NAME = "view.json"
REJECTS_NAME = "rejects.jsonl"
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".json"
TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)
SHARD_PREFIX = {TRAIN: "shard", VAL: "val"}
SHARD_NUMBER_DIGITS = 6
FEATURE_SUFFIX = "feat.npy"  # member suffixes, after the key's dot
META_SUFFIX = "json"
AUDIO_SUFFIX = "flac"
MEMBER_ORDER = (FEATURE_SUFFIX, META_SUFFIX, AUDIO_SUFFIX)
KEY_HASH_CHARS = 16


class ShardFormatError(ValueError):
    """A shard set, view, shard or sample does not follow the shard format."""


def shard_name(split: str, number: int) -> str:
    """`shard-000042` (train) or `val-000042`: a shard's name without extension."""
    return f"{SHARD_PREFIX[split]}-{number:0{SHARD_NUMBER_DIGITS}d}"


def source_sha1(uri: str) -> str:
    """sha1 of a source URI (hex), recorded in each sample's JSON."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()


def sample_key(uri: str, segment: int) -> str:
    """Sample key `{sha1(uri)[:16]}_{segment:05d}`: no dots, the same on every run."""
    return f"{source_sha1(uri)[:KEY_HASH_CHARS]}_{segment:05d}"


def member_name(key: str, suffix: str) -> str:
    """A sample's tar member name, e.g. `member_name(key, FEATURE_SUFFIX)`."""
    return f"{key}.{suffix}"
