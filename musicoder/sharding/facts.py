"""Per-sample facts computed by the shard worker from the decoded PCM it already holds (DESIGN §13).

For every segment the worker records, in the sample's JSON and its shard's index:

- ``pcm_sha256``: sha256 of the segment's decoded samples (float32 little-endian, mono, at the
  preset's rate). Equal hashes mean bit-identical decoded audio (the same file under another
  name, or a lossless re-encode of it).
- ``fingerprint``: the segment's Chromaprint fingerprint (libchromaprint through pyacoustid's
  ctypes binding, default algorithm, base64 as `fpcalc` prints it). Chromaprint keeps 32 bits
  per ~124 ms frame from chroma-band energy differences, so it survives lossy re-encoding,
  resampling and gain changes; a trimmed or padded copy matches at a frame offset, which
  `musicoder.curation.fingerprint` searches for. It is fed the PCM the worker decoded, as
  int16: no second decode.
- ``loudness_dbfs``: mean-square level in dBFS (unweighted; digital silence floors at -120).
- ``silent_fraction``: share of 1024-sample frames (~46 ms) whose RMS is below -60 dBFS.
- ``clipped_fraction``: share of the segment's frames at or above 0.999 of full scale in magnitude
  in any channel, counted by the decoder at the file's native rate (`Segment.clipped_fraction`),
  because resampling rounds a clipped plateau off below full scale (it read about half the share
  when counted after resampling).
"""

from __future__ import annotations

import hashlib

import chromaprint
import numpy as np

from musicoder.audio import CLIP_LEVEL

FACT_FIELDS = ("pcm_sha256", "fingerprint", "loudness_dbfs", "silent_fraction", "clipped_fraction")
FINGERPRINT_ALGORITHM = "chromaprint-2"  # libchromaprint's default (TEST2), named in the manifest
SILENCE_DBFS = -60.0
SILENCE_FRAME = 1024  # samples; the musicoder324 hop
FLOOR_DBFS = -120.0


def sample_facts(
    samples: np.ndarray, sample_rate: int, *, clipped_fraction: float | None = None
) -> dict:
    """Hash, fingerprint and quality statistics of one decoded segment.

    Args:
        samples: mono float32 samples `[samples]`, nominally in [-1, 1].
        sample_rate: their rate in Hz.
        clipped_fraction: the decoder's native-rate count (`Segment.clipped_fraction`); None =
            count `samples` at or above `CLIP_LEVEL` (right only for audio never resampled).

    Returns:
        A dict with the keys of :data:`FACT_FIELDS` (JSON-ready).
    """
    x = np.ascontiguousarray(samples, dtype=np.float32)
    power = x.astype(np.float64) ** 2
    frames = power[: len(x) // SILENCE_FRAME * SILENCE_FRAME].reshape(-1, SILENCE_FRAME)
    frame_db = _dbfs(frames.mean(1)) if len(frames) else _dbfs(np.array([power.mean()]))
    return {
        "pcm_sha256": hashlib.sha256(x.astype("<f4", copy=False).tobytes()).hexdigest(),
        "fingerprint": fingerprint(x, sample_rate),
        "loudness_dbfs": round(float(_dbfs(np.array([power.mean()]))[0]), 3),
        "silent_fraction": round(float((frame_db < SILENCE_DBFS).mean()), 6),
        "clipped_fraction": round(
            float(
                (np.abs(x) >= CLIP_LEVEL).mean() if clipped_fraction is None else clipped_fraction
            ),
            8,
        ),
    }


def fingerprint(samples: np.ndarray, sample_rate: int) -> str:
    """Chromaprint fingerprint (base64, as `fpcalc` prints it) of mono float samples."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    printer = chromaprint.Fingerprinter()
    printer.start(sample_rate, 1)
    printer.feed(pcm.tobytes())
    return printer.finish().decode("ascii")


def _dbfs(mean_square: np.ndarray) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(mean_square, 1e-30)), FLOOR_DBFS)
