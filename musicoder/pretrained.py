"""Exported encoders (DESIGN §7, §8, §11): writing and reading `encoder.safetensors` +
`config.json` (no pickle), and the user-facing `musicoder.load_encoder(DIR).embed(waveform)`.

An export carries the model config, the feature preset and the normalization stats of the
pre-training corpus, so a waveform goes through exactly the pipeline the encoder was trained on:
features → normalization → encoder → pooled vector (`musicoder.model.pooling`). `downstream/`
uses the same `Encoder` for probing, fine-tuning and embedding, so every consumer normalizes,
chunks and pools the same way. All export I/O lives here, so `musicoder.model` does none.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
import torchaudio.functional as AF
from torch import nn

from musicoder import storage
from musicoder.audio import SAMPLE_RATE
from musicoder.features import extract_features, num_channels, preset_config
from musicoder.model import STD_FLOOR, MusiCoder, MusiCoderConfig, MusiCoderEncoder
from musicoder.model.pooling import (
    DEFAULT_POOLING,
    check_pooling,
    chunk_bounds,
    pad_chunks,
    pool_layers,
    pool_track,
)

log = logging.getLogger(__name__)

EXPORT_FORMAT = "musicoder-encoder"
EXPORT_FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
RESERVED_KEYS = ("format", "format_version", "model")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Maps `auto` to CUDA when available, else CPU; passes anything else to `torch.device`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _encoder_of(model_or_encoder: nn.Module) -> MusiCoderEncoder:
    if isinstance(model_or_encoder, MusiCoder):
        return model_or_encoder.encoder
    if isinstance(model_or_encoder, MusiCoderEncoder):
        return model_or_encoder
    name = type(model_or_encoder).__name__
    raise TypeError(f"save_encoder: expected MusiCoder or MusiCoderEncoder, got {name}")


def save_encoder(model_or_encoder: nn.Module, out_dir: str, *, extra: dict[str, Any]) -> None:
    """Write `out_dir/encoder.safetensors` (float32) and then `out_dir/config.json`.

    Args:
        model_or_encoder: A `MusiCoder` (its encoder is exported) or a `MusiCoderEncoder`.
        out_dir: Local directory or storage URI.
        extra: JSON-serializable keys added to config.json, normally `preset`, `feature`
            (FeatureConfig as a dict) and `stats` ({"mean": [...], "std": [...]}).

    Raises:
        TypeError: Not a MusiCoder model or encoder.
        ValueError: `extra` uses a reserved key (format, format_version, model).
    """
    encoder = _encoder_of(model_or_encoder)
    clash = [key for key in RESERVED_KEYS if key in extra]
    if clash:
        raise ValueError(f"save_encoder: extra must not set reserved key(s) {clash}")
    tensors = {
        name: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().contiguous()
        for name, t in encoder.state_dict().items()
    }
    metadata = {"format": EXPORT_FORMAT, "format_version": str(EXPORT_FORMAT_VERSION)}
    storage.write_bytes(
        storage.join(out_dir, WEIGHTS_FILE), safetensors.torch.save(tensors, metadata=metadata)
    )
    config = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "model": encoder.config.to_dict(),
        **extra,
    }
    # Written last: a config.json means the weights beside it are complete.
    storage.write_json(storage.join(out_dir, CONFIG_FILE), config)
    log.info("exported encoder (%d tensors) to %s", len(tensors), out_dir)


def _export_paths(dir_or_file: str) -> tuple[str, str]:
    """(weights URI, config URI) for an export dir or a `.safetensors` path."""
    if dir_or_file.endswith(".safetensors"):
        return dir_or_file, storage.join(storage.parent(dir_or_file), CONFIG_FILE)
    return storage.join(dir_or_file, WEIGHTS_FILE), storage.join(dir_or_file, CONFIG_FILE)


def _read_tensors(uri: str) -> dict[str, torch.Tensor]:
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: encoder weights not found")
    try:
        if storage.is_local(uri):  # memory-mapped, no second copy of a multi-GB file
            return safetensors.torch.load_file(str(storage.local_path(uri)))
        return safetensors.torch.load(storage.read_bytes(uri))
    except safetensors.SafetensorError as err:
        raise ValueError(f"{uri}: not a readable safetensors file ({err})") from err


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str
) -> None:
    """Raise a one-line ValueError naming `source` and the first missing, extra or misshapen
    tensor."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        count = len(unexpected)
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]!r} ({count} in all)")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(got.shape)} but config.json "
                f"implies {tuple(want.shape)}"
            )


def load_encoder_weights(dir_or_file: str) -> tuple[MusiCoderEncoder, dict[str, Any]]:
    """Load an exported encoder without DeepSpeed or pickle.

    Args:
        dir_or_file: Export directory (local or URI), or a `.safetensors` path with
            `config.json` beside it.

    Returns:
        (encoder in eval mode on CPU, float32; the whole config.json as a dict).

    Raises:
        FileNotFoundError: Weights or config.json missing.
        ValueError: Wrong format, invalid model config, or tensors that do not match it.
    """
    weights_uri, config_uri = _export_paths(dir_or_file)
    config = storage.read_json(config_uri)
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{config_uri}: not a MusiCoder encoder export (format != {EXPORT_FORMAT!r})"
        )
    if config.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{config_uri}: unsupported format_version {config.get('format_version')!r}, "
            f"expected {EXPORT_FORMAT_VERSION}"
        )
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{config_uri}: missing 'model' section")
    model_config = MusiCoderConfig.from_dict(config["model"], source=config_uri)
    tensors = _read_tensors(weights_uri)
    encoder = MusiCoderEncoder(model_config)
    check_tensors(tensors, encoder.state_dict(), weights_uri)
    encoder.load_state_dict(tensors, strict=True)
    return encoder.eval(), config


class Encoder:
    """An exported MusiCoder encoder with its feature pipeline.

    Attributes:
        model: The `MusiCoderEncoder` (eval mode, on `device`).
        export: The export's `config.json` as a dict.
        preset: Feature preset name, e.g. `musicoder324`.
        device: Where features and the model run.
    """

    def __init__(self, model: MusiCoderEncoder, export: dict, *, device: torch.device) -> None:
        self.export = export
        self.preset: str = export["preset"]
        self.device = device
        self.model = model.to(device).eval()
        self.model_config: MusiCoderConfig = model.config
        channels = num_channels(self.preset)
        stats = export.get("stats") or {}
        mean = np.asarray(stats.get("mean", np.zeros(channels)), dtype=np.float32)
        std = np.asarray(stats.get("std", np.ones(channels)), dtype=np.float32)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ValueError(f"encoder config.json: stats must have {channels} means and stds")
        if not stats:
            log.warning("encoder config.json has no normalization stats; using mean 0, std 1")
        self.mean = torch.from_numpy(mean).to(device)
        self.std = torch.from_numpy(std).clamp(min=STD_FLOOR).to(device)
        feature = {
            **dataclasses.asdict(preset_config(self.preset)),
            **(export.get("feature") or {}),
        }
        self.sample_rate = int(feature.get("sample_rate", SAMPLE_RATE))
        self.hop_length = int(feature["hop_length"])

    @property
    def num_states(self) -> int:
        """Number of pooled hidden states per chunk (input embedding + one per layer)."""
        return self.model_config.num_layers + 1

    @property
    def hidden(self) -> int:
        """Width of the hidden states."""
        return self.model_config.hidden

    def pooled_dim(self, pooling: str = DEFAULT_POOLING) -> int:
        """Width of a pooled state or embedding: 2H for `meanstd`, H for `mean`."""
        return self.hidden * (2 if check_pooling(pooling) == "meanstd" else 1)

    def window(self, chunk_seconds: float | None = None) -> int:
        """Chunk length in frames: `chunk_seconds` capped by the model window (`max_frames`)."""
        if chunk_seconds is None:
            return self.model_config.max_frames
        return max(
            1,
            min(
                self.model_config.max_frames,
                round(chunk_seconds * self.sample_rate / self.hop_length),
            ),
        )

    def random_like(self, seed: int) -> Encoder:
        """A randomly initialised encoder of the same config, preset and stats (a baseline)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MusiCoderEncoder(self.model_config)
        return Encoder(model, self.export, device=self.device)

    def features(
        self, waveform: torch.Tensor | np.ndarray, sample_rate: int | None = None
    ) -> torch.Tensor:
        """Raw features of a mono waveform: `[samples]` → `(T, C)` float16 on `device`."""
        wave = torch.as_tensor(waveform, dtype=torch.float32)
        if wave.ndim != 1 or wave.numel() == 0:
            raise ValueError(
                f"embed: want a non-empty mono waveform [samples], got shape {tuple(wave.shape)}"
            )
        if sample_rate is not None and sample_rate != self.sample_rate:
            wave = AF.resample(wave, sample_rate, self.sample_rate)
        return extract_features(wave.to(self.device), self.preset)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """Applies the export's normalization: `(T, C)` any dtype → float32 on `device`."""
        return (features.to(self.device, torch.float32) - self.mean) / self.std

    @torch.no_grad()
    def iter_pooled_states(
        self,
        tracks: Iterable[torch.Tensor],
        *,
        window: int,
        batch_size: int = 16,
        pooling: str = DEFAULT_POOLING,
    ) -> Iterator[torch.Tensor]:
        """Per-chunk, per-layer pooled hidden states of whole tracks, streamed.

        Args:
            tracks: Raw features `(T_i, C)` per track (normalized here); consumed lazily, so a
                large task never holds all its features in memory.
            window: Chunk length in frames (see `window()`).
            batch_size: Chunks per encoder call.
            pooling: `meanstd` or `mean` (see `pool_layers`).

        Yields:
            One `(n_chunks_i, L + 1, pooled_dim)` float32 CPU tensor per track, in input order.
        """
        check_pooling(pooling)
        buffer: list[tuple[int, torch.Tensor]] = []  # (track position in buffer, chunk)
        count = 0
        for feats in tracks:
            buffer += [
                (count, self.normalize(feats[s:e])) for s, e in chunk_bounds(feats.shape[0], window)
            ]
            count += 1
            if len(buffer) >= batch_size:
                yield from self._flush(buffer, count, batch_size, pooling)
                buffer, count = [], 0
        if buffer:
            yield from self._flush(buffer, count, batch_size, pooling)

    def _flush(
        self, buffer: list[tuple[int, torch.Tensor]], count: int, batch_size: int, pooling: str
    ) -> Iterator[torch.Tensor]:
        rows: list[list[torch.Tensor]] = [[] for _ in range(count)]
        for first in range(0, len(buffer), batch_size):
            part = buffer[first : first + batch_size]
            batch = pad_chunks([c for _, c in part])
            states = pool_layers(self.model, *batch, pooling=pooling).float().cpu()
            for (i, _), row in zip(part, states, strict=True):
                rows[i].append(row)
        for track_rows in rows:
            yield torch.stack(track_rows)

    def embed_features(
        self,
        features: torch.Tensor,
        *,
        layer: int = -1,
        window: int | None = None,
        pooling: str = DEFAULT_POOLING,
    ) -> torch.Tensor:
        """Embedding of raw features `(T, C)`: `layer` pooled over all frames → `[pooled_dim]`."""
        window = window or self.window()
        states = next(self.iter_pooled_states([features], window=window, pooling=pooling))
        return pool_track(states, features.shape[0], window, layer=layer, pooling=pooling)

    def embed(
        self,
        waveform: torch.Tensor | np.ndarray,
        *,
        sample_rate: int | None = None,
        layer: int = -1,
        pooling: str = DEFAULT_POOLING,
    ) -> torch.Tensor:
        """Embedding of a mono waveform (features → normalization → encoder → pooling).

        Args:
            waveform: Mono audio `[samples]`, float, at `sample_rate`.
            sample_rate: Rate of `waveform`; None = the export's rate (22,050 Hz). Resampled if
                different.
            layer: Hidden state to pool: -1 = last layer, 0 = input embedding.
            pooling: `meanstd` (mean and standard deviation over time, `[2H]`, the probe's
                pooling) or `mean` (`[H]`).

        Returns:
            `[pooled_dim(pooling)]` float32 CPU tensor.

        Raises:
            ValueError: The waveform is not 1-D or is empty, or `pooling` is unknown.
        """
        features = self.features(waveform, sample_rate)
        return self.embed_features(features, layer=layer, pooling=pooling)


def load_encoder(path: str, *, device: str | torch.device = "auto") -> Encoder:
    """Loads an exported encoder.

    Args:
        path: Export folder, or an `encoder.safetensors` path with `config.json` beside it.
        device: `auto` (CUDA when available), `cpu`, `cuda`, ...

    Returns:
        An `Encoder`; `.embed(waveform)` gives a `[2H]` vector (mean and std over time; `[H]`
        with `pooling="mean"`), `.model` is the `nn.Module`.

    Raises:
        FileNotFoundError: No export at `path`.
        ValueError: The export's `config.json` is invalid.
    """
    model, export = load_encoder_weights(path)
    for key in ("model", "preset"):
        if key not in export:
            raise ValueError(f"{path}: config.json has no '{key}' key")
    return Encoder(model, export, device=resolve_device(device))
