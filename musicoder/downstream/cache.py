"""On-disk cache of task features: each track is decoded and featurized once (DESIGN §8).

Probing, fine-tuning, the baselines and later runs on the same audio all read features from
here. An entry is keyed by what determines its content: the audio's identity and version
(local: real path, size and mtime; remote: URI, size and content SHA-1, since object stores
give no portable mtime), the feature preset with all its parameters, the decode cap and a
format version. A changed file or preset therefore misses instead of serving stale features.
Entries are float16 `(frames, C)` `.npy` files (the dtype shards use, so the encoder sees the
same rounding as in pre-training), written atomically through `storage`, read without pickle.

`track_features` bounds memory on long tracks: audio is decoded and featurized in blocks of
about 10 minutes (whole-track extraction of a 3-hour file would need several GB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os

import numpy as np
import torch

from musicoder import storage
from musicoder.audio import SAMPLE_RATE, iter_segments, load_audio
from musicoder.features import extract_features, preset_config

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: tracks over BLOCK_FRAMES are featurized in blocks
BLOCK_FRAMES = 12_920  # frames per featurized block: 600 s at 22,050 Hz and hop 1024


def track_features(
    uri: str,
    preset: str,
    *,
    max_seconds: float | None = None,
    device: torch.device | str = "cpu",
    block_frames: int = BLOCK_FRAMES,
) -> torch.Tensor:
    """Raw features of one audio file, decoded and featurized with bounded memory.

    The track is read in blocks of `block_frames` hops. Every block but the last contributes
    exactly `block_frames` frames, so the frames sit on the whole track's grid (centred at
    multiples of the hop) and a track shorter than one block is featurized exactly as a whole.
    Across a block edge, frames within about a second see zero padding instead of the
    neighbouring audio, and MFCC's dynamic-range floor is per block (as in a shard segment); a
    tail under the minimum track length after the last full block is dropped.

    Args:
        uri: Audio file (local path or URI).
        preset: Feature preset.
        max_seconds: Decode at most this many seconds (then in one piece).
        device: Where features are computed.
        block_frames: Frames per block.

    Returns:
        `(frames, C)` float16 CPU tensor of raw (unnormalized) features.

    Raises:
        musicoder.audio.AudioError: The audio cannot be used (unreadable, too short, silent...).
        FileNotFoundError: `uri` does not exist.
    """
    cfg = preset_config(preset)
    if max_seconds is not None:
        waveform = load_audio(uri, cfg.sample_rate, max_seconds)
        return extract_features(waveform.to(device), cfg).cpu()
    seconds = block_frames * cfg.hop_length / cfg.sample_rate
    # A block is featurized once the next one arrives or the file passed its whole-file checks
    # (silence, length: decided at the end), so unusable audio costs no feature extraction.
    parts, pending = [], None
    for segment in iter_segments(uri, seconds, cfg.sample_rate):
        if pending is not None:  # a block with audio after it: its last frame is the next's first
            parts.append(extract_features(pending.to(device), cfg).cpu()[:block_frames])
        pending = segment.samples
    parts.append(extract_features(pending.to(device), cfg).cpu())  # iteration raised if none
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class FeatureCache:
    """Features of task audio, computed once per track and stored under `root`.

    Attributes:
        hits: Entries served from the cache since construction.
        misses: Entries computed (decode + feature extraction) since construction.
    """

    def __init__(
        self,
        root: str,
        *,
        preset: str,
        max_seconds: float | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        """Args:
        root: Cache folder (local or URI); shared safely between runs and tasks.
        preset: Feature preset, e.g. `musicoder324` (the encoder's).
        max_seconds: Decode at most this many seconds per track (part of the key).
        device: Where features are computed on a miss.
        """
        self.root = root
        self.preset = preset
        self.max_seconds = max_seconds
        self.device = torch.device(device)
        self._settings = {
            "version": CACHE_FORMAT_VERSION,
            "feature": dataclasses.asdict(preset_config(preset)),
            "max_seconds": max_seconds,
            "sample_rate": SAMPLE_RATE,
        }
        self.hits = 0
        self.misses = 0

    def entry_uri(self, uri: str) -> str:
        """Where the features of `uri` are (or would be) stored."""
        if storage.is_local(uri):
            stat = os.stat(storage.local_path(uri))
            identity = {
                "path": storage.real_key(uri),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        else:
            data = storage.read_bytes(uri)
            identity = {"uri": uri, "size": len(data), "sha1": hashlib.sha1(data).hexdigest()}
        blob = json.dumps({**self._settings, "audio": identity}, sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()
        return storage.join(self.root, self.preset, digest[:2], f"{digest}.npy")

    def get(self, uri: str) -> torch.Tensor:
        """Features of one track, from the cache or computed and stored.

        Args:
            uri: Audio file (local path or URI).

        Returns:
            `(frames, C)` float16 CPU tensor of raw (unnormalized) features.

        Raises:
            musicoder.audio.AudioError: The audio cannot be used (unreadable, too short, silent...).
            FileNotFoundError: `uri` does not exist.
        """
        entry = self.entry_uri(uri)
        if storage.exists(entry):
            try:
                features = np.load(io.BytesIO(storage.read_bytes(entry)), allow_pickle=False)
                self.hits += 1
                return torch.from_numpy(features)
            except (ValueError, OSError) as err:  # a damaged entry: recompute it
                log.warning("%s: unreadable cache entry (%s); recomputing", entry, err)
        features = track_features(
            uri, self.preset, max_seconds=self.max_seconds, device=self.device
        )
        buffer = io.BytesIO()
        np.save(buffer, features.numpy(), allow_pickle=False)
        storage.write_bytes(entry, buffer.getvalue())
        self.misses += 1
        return features
