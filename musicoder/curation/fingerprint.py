"""Chromaprint fingerprints of samples: decoding, MinHash signatures and aligned comparison.

The shard worker stores each sample's Chromaprint fingerprint (`musicoder.sharding.facts`): one
32-bit value per ~124 ms frame. Two copies of the same audio give nearly the same values at
matching frames, whatever the codec, rate or gain; a trimmed or padded copy is the same
sequence shifted by a whole number of frames plus a fraction, which flips a few low bits.

- **Candidates**: a sample's *informative* frames (whose value differs from the one before:
  silence and held tones repeat one value and would match everything silent) give tokens, each
  the top 16 bits (:data:`VALUE_MASK`, which survive most fractional shifts) of one frame and of
  the frame :data:`TOKEN_GAP` later: 32-bit, shift-invariant, and rare enough that unrelated
  samples almost never share one (measured set Jaccard against the original: 0.85 for a
  128 kbit/s MP3, 0.15 for a copy trimmed by 5 s, 0.13 padded by 7 s, 0.002 for another track
  with the same instruments, tempo and chords). `bands` MinHash values over the tokens, each
  with the frame it came from, summarize a sample; two samples sharing one become a candidate
  pair, and the two frames give the offset to check.
- **Verification**: the bit error rate of the full 32-bit values, aligned at that offset
  (+-2 frames), over the informative frames of the overlap.
"""

from __future__ import annotations

import chromaprint
import numpy as np

FRAME_SECONDS = 4096 / 3 / 11025  # Chromaprint's default algorithm: 11,025 Hz, hop 1365.3
VALUE_MASK = np.uint32(0xFFFF0000)
TOKEN_GAP = 3  # frames between the two values of a token (~0.37 s)
MIN_INFORMATIVE = 8  # tokens; fewer (silence, a held tone) cannot be matched
OFFSET_SLACK = 2  # frames either side of a candidate's offset
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier (Fibonacci hashing)


class FingerprintError(ValueError):
    """A stored fingerprint cannot be decoded."""


def decode(fingerprint: str) -> np.ndarray:
    """A stored (base64, compressed) Chromaprint fingerprint as `uint32 [frames]`.

    Raises:
        FingerprintError: not a Chromaprint fingerprint.
    """
    try:
        raw, _algorithm = chromaprint.decode_fingerprint(fingerprint.encode("ascii"))
    except (chromaprint.FingerprintError, UnicodeError, TypeError) as exc:
        raise FingerprintError(f"undecodable fingerprint ({exc})") from None
    return np.asarray(raw, dtype=np.int64).astype(np.uint32)


def informative(values: np.ndarray) -> np.ndarray:
    """`bool [frames]`: frames whose value differs from the previous frame's (the first frame
    counts when it differs from the second)."""
    keep = np.ones(len(values), dtype=bool)
    if len(values) > 1:
        keep[1:] = values[1:] != values[:-1]
        keep[0] = values[0] != values[1]
    return keep


def band_seeds(bands: int) -> np.ndarray:
    """The MinHash functions' seeds, `uint64 [bands]`, fixed so signatures compare across runs."""
    return np.random.default_rng(0x5EED).integers(1, 2**63, size=bands, dtype=np.uint64)


def minhash(values: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """MinHash signature of a sample's tokens (pairs of masked informative values).

    Args:
        values: `uint32 [frames]` fingerprint.
        seeds: from :func:`band_seeds`.

    Returns:
        `(hashes uint64 [bands], frames int32 [bands])`: per band the minimum hash and the frame
        its token started at; None with fewer than :data:`MIN_INFORMATIVE` tokens.
    """
    keep = informative(values)
    frames = np.flatnonzero(keep[:-TOKEN_GAP] & keep[TOKEN_GAP:])
    if len(frames) < MIN_INFORMATIVE:
        return None
    masked = (values & VALUE_MASK).astype(np.uint64)
    tokens = masked[frames] | (masked[frames + TOKEN_GAP] >> np.uint64(16))  # 32 bits
    hashed = (tokens[None, :] ^ seeds[:, None]) * _MIX  # (bands, tokens), wraps
    hashed ^= hashed >> np.uint64(29)
    best = hashed.argmin(axis=1)
    return hashed[np.arange(len(seeds)), best], frames[best].astype(np.int32)


def best_rates(
    values: np.ndarray,
    offsets: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    offset: np.ndarray,
    min_frames: int,
) -> np.ndarray:
    """Per pair, the lowest bit error rate among the alignments within :data:`OFFSET_SLACK`
    frames of its offset that compare at least `min_frames` frames (1.0 if none): `float64
    [pairs]`. An alignment `o` compares `a[t]` with `b[t - o]` over the overlap's frames that
    are informative in both.

    Args:
        values: every sample's fingerprint, concatenated (`uint32`, e.g. a memmap).
        offsets: `int64 [samples + 1]`: sample `s` is `values[offsets[s]:offsets[s + 1]]`.
        i, j: the pairs' samples (`a` and `b`), `[pairs]`.
        offset: each pair's candidate offset (`frame_i - frame_j`), `[pairs]`.
        min_frames: fewest frames an alignment must compare to count.

    Both fingerprints of a pair are laid out as rows padded to the longest in the batch, and
    each of the 2 x OFFSET_SLACK + 1 alignments is one gather and one popcount over the whole
    batch (tests check it against a per-pair loop; at 1M samples the match phase took 7.9 CPU s
    with it and 46 with that loop, BENCHMARKS.md).
    """
    a, ka, la = _rows(values, offsets, np.asarray(i, np.int64))
    b, kb, lb = _rows(values, offsets, np.asarray(j, np.int64))
    width = max(a.shape[1], b.shape[1])
    a, ka = _pad(a, width), _pad(ka, width)
    t = np.arange(width)[None, :]
    best = np.ones(len(a))
    for d in range(-OFFSET_SLACK, OFFSET_SLACK + 1):
        at = t - (np.asarray(offset, np.int64) + d)[:, None]  # b's frame facing a's frame t
        inside = (at >= 0) & (at < lb[:, None]) & (t < la[:, None])
        at = np.clip(at, 0, max(b.shape[1] - 1, 0))
        keep = inside & ka & np.take_along_axis(kb, at, axis=1)
        bits = np.bitwise_count(a ^ np.take_along_axis(b, at, axis=1))
        n = keep.sum(axis=1)
        errors = np.where(keep, bits, 0).sum(axis=1, dtype=np.int64)
        rate = np.where(n > 0, errors / (32.0 * np.maximum(n, 1)), 1.0)
        best = np.where((n >= min_frames) & (rate < best), rate, best)
    return best


def _rows(values, offsets, samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fingerprints of `samples` as zero-padded rows, their `informative` masks, lengths."""
    lengths = offsets[samples + 1] - offsets[samples]
    width = max(int(lengths.max(initial=0)), 1)
    t = np.arange(width)[None, :]
    inside = t < lengths[:, None]
    rows = np.where(inside, values[np.where(inside, offsets[samples][:, None] + t, 0)], 0)
    rows = rows.astype(np.uint32)
    keep = np.zeros(rows.shape, dtype=bool)
    keep[:, 1:] = rows[:, 1:] != rows[:, :-1]
    keep[:, 0] = np.where(lengths > 1, rows[:, 0] != rows[:, min(1, width - 1)], True)
    return rows, keep & inside, lengths


def _pad(rows: np.ndarray, width: int) -> np.ndarray:
    return np.pad(rows, ((0, 0), (0, width - rows.shape[1])))
