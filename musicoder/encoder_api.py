"""The user-facing encoder: `musicoder.load_encoder(DIR).embed(waveform)` (DESIGN §8, §11).

An export (`encoder.safetensors` + `config.json`) carries the model config, the feature preset
and the normalization stats of the pre-training corpus, so a waveform goes through exactly the
pipeline the encoder was trained on: features → normalization → encoder → pooled vector.
`downstream/` uses the same object for probing, fine-tuning and embedding, so every consumer
normalizes, chunks and pools the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torchaudio.functional as AF

from musicoder.audio import SAMPLE_RATE
from musicoder.features import extract_features, num_channels, preset_config
from musicoder.model import MusiCoderConfig, MusiCoderEncoder, load_encoder_weights

log = logging.getLogger(__name__)

STD_FLOOR = 1e-5  # constant channels in the corpus stats would otherwise divide by ~0
VAR_FLOOR = 1e-12  # pooled variances are clamped here before the square root


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Maps `auto` to CUDA when available, else CPU; passes anything else to `torch.device`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def chunk_bounds(num_frames: int, window: int) -> list[tuple[int, int]]:
    """Splits `num_frames` into the fewest near-equal chunks of at most `window` frames.

    Equal chunks (sizes differ by at most one) avoid a tiny trailing chunk whose prediction
    would weigh as much as a full one when chunk predictions are averaged per track.
    """
    if num_frames < 1 or window < 1:
        raise ValueError(
            f"chunk_bounds: need num_frames >= 1 and window >= 1, got {num_frames}, {window}"
        )
    count = math.ceil(num_frames / window)
    edges = [round(i * num_frames / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def pad_chunks(chunks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads `[T_i, C]` chunks into one batch.

    Returns:
        `(features, valid)`: `(B, T, C)` float32 zero-padded and `(B, T)` bool, True = real frame.
    """
    longest = max(c.shape[0] for c in chunks)
    features = chunks[0].new_zeros((len(chunks), longest, chunks[0].shape[1]), dtype=torch.float32)
    valid = torch.zeros((len(chunks), longest), dtype=torch.bool, device=chunks[0].device)
    for i, chunk in enumerate(chunks):
        features[i, : chunk.shape[0]] = chunk
        valid[i, : chunk.shape[0]] = True
    return features, valid


POOLINGS = ("meanstd", "mean")
DEFAULT_POOLING = "meanstd"


def check_pooling(pooling: str) -> str:
    """Returns `pooling` if it is a known pooling, else raises a one-line ValueError."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling


def pool_layers(
    model: MusiCoderEncoder,
    features: torch.Tensor,
    valid: torch.Tensor,
    *,
    pooling: str = DEFAULT_POOLING,
) -> torch.Tensor:
    """Pools every hidden state over the valid frames of each chunk.

    Args:
        model: The encoder.
        features: `(B, T, C)` normalized features.
        valid: `(B, T)` bool, True = real frame.
        pooling: `meanstd`: mean and standard deviation over time, concatenated (statistics
            pooling; the default, see docs/decisions.md); `mean`: the mean only.

    Returns:
        `(B, L + 1, D)`: the input embedding and each layer's output, pooled over time;
        D = 2H for `meanstd` (`[..., :H]` is the mean), H for `mean`.
    """
    hidden = model(features, valid, output_hidden_states=True).hidden_states
    stacked = torch.stack(hidden, dim=1)  # (B, L+1, T, H)
    weights = valid.to(stacked.dtype)[:, None, :, None]  # (B, 1, T, 1)
    count = weights.sum(dim=2).clamp(min=1.0)
    mean = (stacked * weights).sum(dim=2) / count  # (B, L+1, H)
    if check_pooling(pooling) == "mean":
        return mean
    var = ((stacked - mean[:, :, None]).square() * weights).sum(dim=2) / count
    # Clamped: a one-frame chunk has variance 0, where sqrt's gradient is infinite (NaN when
    # fine-tuning); clamp passes no gradient there.
    return torch.cat([mean, var.clamp(min=VAR_FLOOR).sqrt()], dim=-1)


def pool_track(
    states: torch.Tensor,
    num_frames: int,
    window: int,
    *,
    layer: int = -1,
    pooling: str = DEFAULT_POOLING,
) -> torch.Tensor:
    """One vector per track from its per-chunk pooled states `(n_chunks, L + 1, D)` → `[D]`.

    Chunks are weighted by their length, so the result is `layer`'s statistics over every frame
    of the track: the mean over all frames, and for `meanstd` (states from `pool_layers` with
    the same `pooling`) the standard deviation over all frames, chunk variances and the spread
    of chunk means combined.
    """
    lengths = torch.tensor(
        [e - s for s, e in chunk_bounds(num_frames, window)], dtype=torch.float32
    )
    share = (lengths / lengths.sum())[:, None]  # (n_chunks, 1)
    chunks = states[:, layer]  # (n_chunks, D)
    if check_pooling(pooling) == "mean" or len(chunks) == 1:
        return (chunks * share).sum(0)
    hidden = chunks.shape[-1] // 2
    mean, std = chunks[:, :hidden], chunks[:, hidden:]
    total_mean = (mean * share).sum(0)
    total_var = ((std.square() + (mean - total_mean).square()) * share).sum(0)
    return torch.cat([total_mean, total_var.clamp(min=VAR_FLOOR).sqrt()])


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
