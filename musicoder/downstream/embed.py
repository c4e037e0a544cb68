"""Embeddings for users' own data: one vector per track (or per shard sample) (DESIGN §8, §11).

Inputs: an audio folder or `s3://` prefix (listed through `storage.list_objects`), one audio
file, or a shard set (its folder or `manifest.json`: each sample's stored `feat.npy` is
embedded, no audio is decoded). Outputs under `cfg.output`: `embeddings.npy` (float32 `(N, D)`:
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
from musicoder.encoder_api import load_encoder, pool_track, resolve_device

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_LISTS = ("train", "val")
FEAT_SUFFIX, META_SUFFIX = ".feat.npy", ".json"
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
        kind, total, items = "shards", *_shard_items(shard_manifest, encoder.preset)
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
    if path.endswith(MANIFEST):
        return path
    candidate = storage.join(path, MANIFEST)
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


def _shard_items(manifest_uri: str, preset: str) -> tuple[int, Iterator[Item]]:
    manifest = storage.read_json(manifest_uri)
    if manifest.get("preset") != preset:
        raise ValueError(
            f"{manifest_uri}: shards use preset {manifest.get('preset')!r}, the encoder {preset!r}"
        )
    base = storage.parent(manifest_uri)
    shards = [storage.join(base, s["name"]) for part in SHARD_LISTS for s in manifest.get(part, [])]
    total = sum(s.get("samples", 0) for part in SHARD_LISTS for s in manifest.get(part, []))
    return total, (item for shard in shards for item in _read_shard(shard))


def _read_shard(uri: str) -> Iterator[Item]:
    """Streams `(key.feat.npy, key.json)` pairs of one shard tar, without extracting anything."""
    pending: dict[str, dict] = {}
    with storage.open_read(uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, suffix = _split_name(member.name)
            if suffix not in (FEAT_SUFFIX, META_SUFFIX):
                continue
            data = tar.extractfile(member).read()
            entry = pending.setdefault(key, {})
            entry[suffix] = (
                np.load(io.BytesIO(data), allow_pickle=False)
                if suffix == FEAT_SUFFIX
                else json.loads(data)
            )
            if len(entry) == 2:
                meta, features = pending.pop(key)[META_SUFFIX], entry[FEAT_SUFFIX]
                yield Item(
                    meta.get("source", uri), key, meta.get("segment"), torch.from_numpy(features)
                )
    if pending:
        log.warning(
            "%s: %d samples without both feat.npy and json were left out", uri, len(pending)
        )


def _split_name(name: str) -> tuple[str, str]:
    for suffix in (FEAT_SUFFIX, META_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


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
