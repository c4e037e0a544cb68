"""Weighted mixtures of shard sets and views as training data (DESIGN §13).

`data.sources: [{uri, weight, name}]` names several manifests or views; `data.manifest` stays
the one-source shorthand. `read_data` resolves either into one `Manifest`
(`musicoder.shardset.manifest.mix_manifests`: shards of every source in order, each carrying its
per-sample weight and source index; one feature preset; normalization statistics pooled by
frames x weight in float64).

A weight counts draws per sample and epoch: a source of weight 2 has each sample drawn twice per
epoch on average, one of weight 0.5 half of its samples; with weights of 1 everywhere a mixture
is the plain union. So an epoch is sum(weight x samples) draws, a source's expected share of the
draws is weight x samples over that sum (`expected_shares`), and weights compose by multiplying
(a view's own per-source weights times the weight it is given here).

The loader draws with `interleave`: per (rank, worker) slot, a seeded generator picks the part
(shards of one weight) of every next sample with probability proportional to the part's
weighted samples, and the part's own stream (its shards planned over the slots as one shard set's
are) delivers it. Everything is a function of (seed, epoch, rank, worker), so skipping the
samples a worker already delivered replays its stream exactly: `DataPosition` resumes a mixture
mid-epoch as it resumes one shard set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from musicoder import storage
from musicoder.shardset.format import MANIFEST_NAME, VIEW_NAME
from musicoder.shardset.manifest import Manifest, mix_manifests, read_manifest

if TYPE_CHECKING:
    from musicoder.data.stream import DataConfig

DEFAULT_MANIFEST = "shards"  # data.manifest when neither it nor data.sources is set (DESIGN §3)
MIXTURE_URI = "data.sources"  # what errors call a mixture (it has no file of its own)
DRAW_CHUNK = 4096  # part choices drawn per generator call (the sequence does not depend on it)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

T = TypeVar("T")


@dataclass
class SourceConfig:
    """One source of a mixture: a shard set or view, and how often its samples are drawn."""

    uri: str = ""  # manifest.json, view.json or their folder; local path, file:// or s3://
    weight: float = 1.0  # draws per sample and epoch (1 = each sample once, as in the union)
    name: str = ""  # TensorBoard name (data/source/<name>); default: the source's folder name

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("data.sources: every source needs a uri")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"data.sources: {self.uri} has weight {self.weight}, need > 0")


def read_data(config: DataConfig) -> Manifest:
    """The training data of `config`: `data.manifest`, or the mixture of `data.sources`.

    Raises:
        FileNotFoundError: a manifest or view is missing.
        ShardFormatError: an unreadable manifest, or sources of different feature presets (the
            one-line message names the offending source's URI).
    """
    if not config.sources:
        return read_manifest(config.manifest or DEFAULT_MANIFEST)
    manifests = [read_manifest(source.uri) for source in config.sources]
    return mix_manifests(MIXTURE_URI, manifests, [source.weight for source in config.sources])


def source_names(config: DataConfig, manifest: Manifest) -> list[str]:
    """One name per source of `manifest` (a mixture's configured sources, a view's shard sets,
    or the one shard set), usable in TensorBoard tags: `name` when given, else the folder that
    holds the manifest; repeats get `_2`, `_3`, ...."""
    given = [source.name for source in config.sources] if config.sources else []
    uris = [m.uri for m in manifest.sources] or [manifest.uri]
    names: list[str] = []
    for n, uri in enumerate(uris):
        name = _UNSAFE.sub("_", (given[n] if n < len(given) and given[n] else _folder(uri)))
        unique, k = name, 1
        while unique in names:
            k += 1
            unique = f"{name}_{k}"
        names.append(unique)
    return names


def _folder(uri: str) -> str:
    base = storage.basename(uri)
    if base in (MANIFEST_NAME, VIEW_NAME):
        return storage.basename(storage.parent(uri)) or base
    return base.removesuffix(".json")


def expected_shares(manifest: Manifest) -> list[float]:
    """Each source's expected share of the drawn train samples: weight x samples, normalized."""
    mass = np.zeros(max(1, len(manifest.sources)))
    for ref in manifest.train:
        mass[ref.source] += ref.weight * ref.samples
    return (mass / mass.sum()).tolist() if mass.sum() else mass.tolist()


def interleave(
    streams: Sequence[Iterator[T]], masses: Sequence[float], rng: np.random.Generator
) -> Iterator[T]:
    """Endlessly take the next item of `streams[k]`, k drawn with probability proportional to
    `masses[k]` by `rng` (one uniform draw per item, so the sequence is a function of the
    generator's seed alone). The streams must not end.
    """
    cdf = np.cumsum(np.asarray(masses, dtype=np.float64))
    cdf /= cdf[-1]
    last = len(streams) - 1
    while True:
        for k in np.searchsorted(cdf, rng.random(DRAW_CHUNK), side="right"):
            yield next(streams[min(int(k), last)])  # min: a draw of exactly 1.0 after rounding
