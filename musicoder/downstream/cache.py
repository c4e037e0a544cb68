"""On-disk cache of task features: each track is decoded and featurized once (DESIGN §8).

Probing, fine-tuning, the baselines and later runs on the same audio all read features from
here. An entry is keyed by what determines its content: the audio's identity and version
(local: real path, size and mtime; remote: URI, size and content SHA-1, since object stores
give no portable mtime), the feature preset with all its parameters, the decode cap and a
format version. A changed file or preset therefore misses instead of serving stale features.
Entries are float16 `(frames, C)` `.npy` files (the dtype shards use, so the encoder sees the
same rounding as in pre-training), written atomically through `storage`, read without pickle.
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
from musicoder.audio import SAMPLE_RATE, load_audio
from musicoder.features import extract_features, preset_config

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


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
        waveform = load_audio(uri, SAMPLE_RATE, self.max_seconds)
        features = extract_features(waveform.to(self.device), self.preset).cpu()
        buffer = io.BytesIO()
        np.save(buffer, features.numpy(), allow_pickle=False)
        storage.write_bytes(entry, buffer.getvalue())
        self.misses += 1
        return features
