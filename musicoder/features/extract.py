"""Feature extraction in torch: the MusiCoder-324 input and a plain log-mel preset.

`extract_features` maps mono 22,050 Hz waveforms to ``[frames, C]`` (batched ``[B, frames, C]``)
on any device, frames centred like librosa's (``1 + samples // hop``, zero padding). Each block
follows the librosa call the tests use as reference (DESIGN §4): chroma 0-11 ``chroma_stft``
(tuning 0); MFCC 12-31 ``mfcc`` (DCT of ``power_to_db``, top_db 80); delta 32-51 ``delta``;
log-mel 52-179 ``log(melspectrogram + 1e-6)``; log-CQT 180-323 ``log(|cqt| + 1e-6)``.

The CQT is the costly block. Like librosa it works octave by octave: every octave uses the same
24 short complex kernels at a sample rate halved per octave (anti-aliased by a Kaiser half-band
FIR), with the hop halved too, so the lowest octave (C1: kernels of ~1 s at the full rate) costs
as little as the top one. The kernels are applied as one matrix product over strided frames,
which on a CPU beats both FFT-domain products and long convolutions (nnAudio). No I/O and no
global state except a cache of kernels per (config, device).
"""

import dataclasses
import functools
import logging

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from musicoder.features.config import (
    MUSICODER324,
    FeatureConfig,
    channel_blocks,
    cqt_plan,
    num_channels,
    num_frames,
    preset_config,
)
from musicoder.features.filters import (
    DECIMATE_BLOCK,
    DECIMATE_HALF_TAPS,
    chroma_filterbank,
    cqt_kernels,
    halfband,
)

log = logging.getLogger(__name__)

DB_AMIN = 1e-10  # librosa.power_to_db floor (power)
MEL_GROUP = 16  # mel bands per block of the block-sparse mel product
STFT_CHUNK_CPU = 256  # STFT frames per step on a CPU: 2 MiB of frames stay in cache
STFT_CHUNK_GPU = 1 << 16  # on a GPU: bounds memory only (0.5 GiB of frames)


class FeatureExtractor:
    """Feature extractor with its filterbanks and kernels built once on one device.

    Args:
        config: A preset name or a full config.
        device: Where the kernels live and the computation runs.
    """

    def __init__(
        self, config: str | FeatureConfig = MUSICODER324, device: torch.device | str = "cpu"
    ) -> None:
        self.config = cfg = preset_config(config)
        self.device = torch.device(device)
        self.blocks = channel_blocks(cfg)
        self.channels = num_channels(cfg)
        self.chunk_frames = STFT_CHUNK_CPU if self.device.type == "cpu" else STFT_CHUNK_GPU

        def put(array: np.ndarray | torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(array).to(device=self.device, dtype=torch.float32)

        n_freqs = cfg.n_fft // 2 + 1
        self.window = put(torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64))
        self.chroma_filterbank = put(chroma_filterbank(cfg).T)  # (n_freqs, n_chroma)
        mel = AF.melscale_fbanks(
            n_freqs,
            0.0,
            cfg.sample_rate / 2,
            cfg.n_mels,
            cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freqs, n_mels)
        # Mel bands cover few FFT bins: groups of bands multiply their bins only (8x less work).
        self.mel_groups = []
        for group in put(mel).split(MEL_GROUP, dim=1):
            used = group.ne(0).any(1).nonzero()[:, 0].tolist() or [0, -1]
            self.mel_groups.append((used[0], used[-1] + 1, group[used[0] : used[-1] + 1]))
        self.dct = put(AF.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho"))  # (n_mels, n_mfcc)
        self.cqt_plan = plan = cqt_plan(cfg) if "cqt" in self.blocks else None
        if plan is not None:
            kernel, scale = cqt_kernels(cfg, plan)
            self.cqt_kernel, self.cqt_scale = put(kernel), put(scale)
            centre, band = halfband()
            self.halfband_centre, self.halfband = centre, put(band)
        log.debug("feature extractor %s on %s", cfg.preset, self.device)

    @torch.no_grad()
    def __call__(
        self, waveform: torch.Tensor, *, out_dtype: torch.dtype = torch.float16
    ) -> torch.Tensor:
        """Compute features.

        Args:
            waveform: ``(samples,)`` or ``(B, samples)`` audio at ``config.sample_rate``, finite;
                moved to this extractor's device, computed in float32, never modified.
            out_dtype: Floating dtype of the result; values are clamped to its finite range.

        Returns:
            ``(frames, C)`` or ``(B, frames, C)`` features, ``frames = 1 + samples // hop``.

        Raises:
            ValueError: ``waveform`` is not 1-D or 2-D, or ``out_dtype`` is not floating point.
        """
        if waveform.dim() not in (1, 2):
            raise ValueError(
                f"waveform: expected (samples,) or (B, samples), got shape {tuple(waveform.shape)}"
            )
        if not out_dtype.is_floating_point:
            raise ValueError(f"out_dtype: {out_dtype} is not a floating dtype")
        cfg = self.config
        x = waveform.to(device=self.device, dtype=torch.float32)
        x = x[None] if x.dim() == 1 else x  # (B, samples)
        n_frames = num_frames(x.shape[-1], cfg)
        out = x.new_empty(x.shape[0], n_frames, self.channels, dtype=out_dtype)  # (B, T, C)

        mel, chroma = self._bands(x)
        mfcc = self._mfcc(mel) if "mfcc" in self.blocks else None
        compute = {
            "chroma": lambda: chroma,
            "mfcc": lambda: mfcc,
            "delta": lambda: delta(mfcc, cfg.delta_width),
            "mel": lambda: torch.log(mel + cfg.log_eps),
            "cqt": lambda: torch.log(self._cqt(x, n_frames) + cfg.log_eps),
        }
        for name, where in self.blocks.items():
            out[..., where] = compute[name]()
        if out_dtype.itemsize < 4:  # float16 overflows at 65504: keep every value finite
            limit = torch.finfo(out_dtype).max
            out.clamp_(-limit, limit)
        return out[0] if waveform.dim() == 1 else out

    def _bands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel power ``(B, T, n_mels)`` and chroma ``(B, T, n_chroma)`` scaled to peak 1 per frame.

        Runs over chunks of frames, which a CPU keeps in cache; long tracks never hold all spectra.
        """
        cfg, half = self.config, self.config.n_fft // 2
        frames = F.pad(x, (half, half)).unfold(-1, cfg.n_fft, cfg.hop_length)  # (B, T, n_fft)
        step = max(1, self.chunk_frames // len(x))
        mel, chroma = [], []
        for start in range(0, frames.shape[1], step):
            spec = torch.fft.rfft(frames[:, start : start + step] * self.window)  # (B, t, n_freqs)
            power = spec.real.square() + spec.imag.square()
            mel.append(torch.cat([power[..., lo:hi] @ w for lo, hi, w in self.mel_groups], -1))
            chroma.append(power @ self.chroma_filterbank)  # (B, t, n_chroma): cheap, always
        chroma = torch.cat(chroma, 1)
        peak = chroma.amax(-1, keepdim=True)
        tiny = torch.finfo(torch.float32).tiny  # librosa.util.normalize leaves such frames
        return torch.cat(mel, 1), chroma / torch.where(peak > tiny, peak, 1.0)

    def _mfcc(self, mel: torch.Tensor) -> torch.Tensor:
        """``librosa.feature.mfcc`` on mel power ``(B, T, n_mels)`` -> ``(B, T, n_mfcc)``."""
        db = 10.0 * torch.log10(mel.clamp(min=DB_AMIN))
        floor = db.amax(dim=(1, 2), keepdim=True) - self.config.top_db
        return torch.maximum(db, floor) @ self.dct

    def _cqt(self, x: torch.Tensor, n_frames: int) -> torch.Tensor:
        """CQT magnitudes ``(B, T, cqt_bins)`` of ``x`` ``(B, samples)``, lowest bin first."""
        plan, bpo = self.cqt_plan, self.config.cqt_bins_per_octave
        width = self.cqt_kernel.shape[0]
        hop = self.config.hop_length >> plan.early
        signal = x
        for _ in range(plan.early):
            signal = self._halve(signal)
        octaves = []
        for octave in range(plan.octaves):
            if octave:
                signal, hop = self._halve(signal), hop // 2
            right = max(0, (n_frames - 1) * hop + width // 2 - signal.shape[-1])
            frames = F.pad(signal, (width // 2, right)).unfold(-1, width, hop)[:, :n_frames]
            response = frames @ self.cqt_kernel  # (B, T, 2 * bpo): real, imaginary
            octaves.append(torch.hypot(response[..., :bpo], response[..., bpo:]))
        magnitude = torch.cat(octaves[::-1], dim=-1)[..., -self.config.cqt_bins :]
        return magnitude * self.cqt_scale

    def _halve(self, x: torch.Tensor) -> torch.Tensor:
        """Anti-aliased decimation by 2 (zero phase, zero padded): ``(B, n) -> (B, ceil(n/2))``."""
        half, block = DECIMATE_HALF_TAPS, DECIMATE_BLOCK
        even, odd = x[:, 0::2], x[:, 1::2]
        rows = max(1, -(-even.shape[-1] // block))
        padded = F.pad(odd, (half // 2, block * rows + half // 2 - 1 - odd.shape[-1]))
        frames = padded.unfold(-1, block + half - 1, block)  # (B, rows, b + M - 1)
        filtered = (frames @ self.halfband).flatten(1)[:, : even.shape[-1]]
        return filtered.add_(even, alpha=self.halfband_centre)


def delta(features: torch.Tensor, width: int = 9) -> torch.Tensor:
    """``librosa.feature.delta`` (order 1, mode ``interp``) along frames of ``(B, T, C)``.

    Inside, the least-squares slope over ``width`` frames; the first and last ``width // 2``
    frames repeat the slope of the first and last full window, as ``interp`` does for a line fit.
    Inputs shorter than ``width`` (where librosa raises) get the slope over all their frames.
    """
    n = features.shape[1]
    if n < width:
        if n == 1:
            return torch.zeros_like(features)
        width = n
    half = width // 2
    offsets = torch.arange(width, dtype=features.dtype, device=features.device) - (width - 1) / 2
    slope = features.unfold(1, width, 1) @ (offsets / offsets.square().sum())  # (B, T', C)
    return torch.cat(
        [
            slope[:, :1].expand(-1, half, -1),
            slope,
            slope[:, -1:].expand(-1, n - slope.shape[1] - half, -1),
        ],
        dim=1,
    )


@functools.lru_cache(maxsize=32)
def _cached_extractor(config: tuple, device: torch.device) -> FeatureExtractor:
    return FeatureExtractor(FeatureConfig(*config), device)


def get_extractor(
    preset: str | FeatureConfig = MUSICODER324, device: torch.device | str = "cpu"
) -> FeatureExtractor:
    """A shared `FeatureExtractor` for ``(preset, device)``, built on first use."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached_extractor(dataclasses.astuple(preset_config(preset)), device)


def extract_features(
    waveform: torch.Tensor,
    preset: str | FeatureConfig = MUSICODER324,
    *,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Features of mono audio on the waveform's device.

    Args:
        waveform: ``(samples,)`` or ``(B, samples)`` float audio at the preset's sample rate.
        preset: Preset name (``musicoder324``, ``logmel128``) or a full `FeatureConfig`.
        out_dtype: Result dtype (computation is float32).

    Returns:
        ``(frames, C)`` or ``(B, frames, C)``, ``frames = num_frames(samples)``.

    Raises:
        ValueError: Unknown preset or a waveform that is not 1-D or 2-D.
    """
    return get_extractor(preset, waveform.device)(waveform, out_dtype=out_dtype)
