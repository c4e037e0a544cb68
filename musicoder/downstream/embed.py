"""Embeddings for users' own data: one vector per track (or per shard sample) (DESIGN §8, §11).

Inputs: an audio folder or `s3://` prefix (listed through `storage.list_objects`), one audio
file, or a shard set (its folder or `manifest.json`: each sample's stored `feat.npy` is
embedded, no audio is decoded) or a view over shard sets (its folder or `view.json`: the
samples it keeps; read through `musicoder.shardset`, so the format version, preset,
shape and finite values are checked as the training loader checks them). Outputs under `cfg.output`: `embeddings.npy` (float32 `(N, D)`:
D = 2H for the default `meanstd` pooling, H for `mean`; row i = line i of the index),
`index.csv` (`row,path,key,segment,frames`) and, when
something could not be embedded, `rejects.jsonl` (uri, reason, error class) with a warning
that lists them: nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from musicoder import storage
from musicoder.audio import AudioError
from musicoder.downstream.cache import track_features
from musicoder.downstream.config import EmbedConfig
from musicoder.downstream.sources import AUDIO_EXTENSIONS, Skip, csv_text
from musicoder.downstream.tasks import warn_skips
from musicoder.model.pooling import pool_track
from musicoder.pretrained import load_encoder, resolve_device
from musicoder.shardset.format import MANIFEST_NAME, VIEW_NAME, ShardFormatError
from musicoder.shardset.manifest import Manifest, ShardRef, manifest_path, read_manifest
from musicoder.shardset.reader import iter_samples
from musicoder.shardset.sample import decode_sample

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("row", "path", "key", "segment", "frames")


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to embed: raw features `(T, C)` and where they came from."""

    path: str
    key: str
    segment: int | None
    features: torch.Tensor


def embed_inputs(cfg: EmbedConfig) -> dict:
    """Embeds every track (or shard sample) under `cfg.input` and writes them to `cfg.output`.

    Args:
        cfg: Encoder, input, output and pooling options.

    Returns:
        Summary: `{"input", "kind", "embedded", "rejected", "dim", "output"}`.

    Raises:
        ValueError: Empty encoder/input, an input file that is not audio, or a shard set made
            with another feature preset.
        FileNotFoundError: The input does not exist or holds no audio.
    """
    if not cfg.encoder or not cfg.input:
        raise ValueError("embed: 'encoder' and 'input' are required")
    encoder = load_encoder(cfg.encoder, device=resolve_device(cfg.device))
    window = encoder.window(cfg.chunk_seconds)
    rejects: list[Skip] = []
    shard_manifest = _manifest_uri(cfg.input)
    if shard_manifest:
        kind, total, items = "shards", *_shard_items(shard_manifest, encoder.preset, rejects)
    else:
        uris = _audio_uris(cfg.input, rejects)
        kind, total = "audio", len(uris)
        items = _audio_items(uris, encoder, cfg.max_seconds, rejects)
    index: list[tuple] = []  # filled as items are consumed, so row i of the states is index[i]

    def tracked() -> Iterator[torch.Tensor]:
        for item in items:
            segment = "" if item.segment is None else item.segment
            index.append((len(index), item.path, item.key, segment, item.features.shape[0]))
            yield item.features

    vectors = []
    states = encoder.iter_pooled_states(
        tracked(), window=window, batch_size=cfg.batch_size, pooling=cfg.pooling
    )
    for row, pooled in enumerate(
        tqdm(states, total=total, desc="embed", unit="track" if kind == "audio" else "sample")
    ):
        vector = pool_track(pooled, index[row][-1], window, layer=cfg.layer, pooling=cfg.pooling)
        vectors.append(vector.numpy())
    if not vectors:
        raise ValueError(f"{cfg.input}: nothing could be embedded ({len(rejects)} rejected)")
    _write(cfg.output, np.stack(vectors).astype(np.float32), index, rejects)
    warn_skips(f"embed {cfg.input}", rejects)
    summary = {
        "input": cfg.input,
        "kind": kind,
        "embedded": len(vectors),
        "rejected": len(rejects),
        "dim": len(vectors[0]),
        "output": cfg.output,
    }
    log.info("embed: %s", summary)
    return summary


def _manifest_uri(path: str) -> str | None:
    """A shard set's manifest or a view behind `path`, else None (audio input)."""
    if path.endswith((MANIFEST_NAME, VIEW_NAME)):
        return path
    candidate = manifest_path(path)
    return candidate if storage.exists(candidate) else None


def _audio_uris(path: str, rejects: list[Skip]) -> list[str]:
    if path.lower().endswith(AUDIO_EXTENSIONS) and storage.exists(path):
        return [path]
    if storage.is_local(path) and storage.local_path(path).is_file():  # listing would crash
        raise ValueError(
            f"{path}: not a folder, a shard set or an audio file ({', '.join(AUDIO_EXTENSIONS)})"
        )
    uris = []
    for info in storage.list_objects(path, extensions=AUDIO_EXTENSIONS):
        if info.size <= 0:
            rejects.append(Skip(info.uri, "broken link" if info.size < 0 else "empty file"))
        else:
            uris.append(info.uri)
    if not uris and not rejects:
        raise FileNotFoundError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return uris


def _audio_items(
    uris: list[str], encoder, max_seconds: float | None, rejects: list[Skip]
) -> Iterator[Item]:
    for uri in uris:
        try:
            features = track_features(
                uri, encoder.preset, max_seconds=max_seconds, device=encoder.device
            )
        except (AudioError, OSError) as err:
            rejects.append(Skip.from_error(uri, err))
            continue
        yield Item(uri, "", None, features)


def _shard_items(manifest_uri: str, preset: str, rejects: list[Skip]) -> tuple[int, Iterator[Item]]:
    manifest = read_manifest(manifest_uri)
    if manifest.preset != preset:
        raise ValueError(
            f"{manifest.uri}: shards use preset {manifest.preset!r}, the encoder {preset!r}"
        )
    shards = [*manifest.train, *manifest.val]
    total = sum(s.samples for s in shards)
    items = (item for shard in shards for item in _read_shard(shard, manifest, preset, rejects))
    return total, items


def _read_shard(
    shard: ShardRef, manifest: Manifest, preset: str, rejects: list[Skip]
) -> Iterator[Item]:
    """Every sample of one shard (less a view's excluded keys) through the shard format's reader
    and checks (format version, preset, shape, finite values); a bad sample or an unreadable
    shard becomes a reject."""
    uri = shard.uri
    try:
        with storage.open_read(uri) as stream:
            for sample in iter_samples(stream, uri):
                if sample["__key__"] in shard.excluded:
                    continue
                try:
                    features, meta = decode_sample(sample, manifest.channels, preset)
                except ShardFormatError as err:
                    rejects.append(Skip.from_error(f"{uri}:{sample['__key__']}", err))
                    continue
                yield Item(
                    meta.get("source", uri),
                    sample["__key__"],
                    meta.get("segment"),
                    torch.from_numpy(features),
                )
    except (OSError, tarfile.TarError, ShardFormatError) as err:
        rejects.append(Skip.from_error(uri, err))


def _write(output: str, vectors: np.ndarray, index: list[tuple], rejects: list[Skip]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    storage.write_bytes(storage.join(output, "embeddings.npy"), buffer.getvalue())
    storage.write_text(storage.join(output, "index.csv"), csv_text(INDEX_COLUMNS, index))
    if rejects:
        records = [{"uri": r.where, "reason": r.reason, "error": r.error} for r in rejects]
        storage.write_text(
            storage.join(output, "rejects.jsonl"), "".join(json.dumps(x) + "\n" for x in records)
        )
