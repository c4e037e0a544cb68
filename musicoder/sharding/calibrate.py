"""Plan-time calibration of encoded bytes per second of audio, per file extension.

The planner sizes shards by estimated audio seconds = file bytes / bytes per second. One fixed
table cannot fit every collection (mono or stereo, 22-96 kHz, 8-24 bit, mp3 at 64-320 kbps): a
22,050 Hz mono WAV corpus is 4x off a 44.1 kHz stereo table, and its shards come out 4x too
large. So the planner measures a small sample instead: per extension, the first
``calibration_files`` files in the plan's seeded order (among the first :data:`SCAN_LIMIT`; empty
files and files over :data:`MAX_SAMPLE_BYTES` are skipped), each read only as far as
``soundfile.info`` needs for the header duration (local files as paths, ``s3://`` objects
streamed through :func:`musicoder.storage.open_read`). An extension's rate is the median of its
readable samples, rounded to :data:`RATE_DIGITS` significant digits so that one sample more or
less rarely moves a shard boundary; without a readable sample it keeps the table rate. A broken
sampled file is skipped, never an error. The cost is bounded by the sample, not the corpus.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable

import soundfile as sf

from musicoder import storage
from musicoder.sharding.inputs import suffix

log = logging.getLogger(__name__)

# Fallback encoded bytes per second of audio by container (44.1 kHz stereo; mp3/ogg ~190 kbps).
INPUT_BYTES_PER_SECOND = {
    ".wav": 176_400,
    ".flac": 100_000,
    ".mp3": 24_000,
    ".ogg": 20_000,
    ".oga": 20_000,
}
DEFAULT_INPUT_BYTES_PER_SECOND = 64_000
MAX_SAMPLE_BYTES = 64_000_000  # larger files are not sampled: bounds the bytes read per file
SCAN_LIMIT = 100_000  # files of the seeded order searched for samples (bounds the planning cost)
RATE_DIGITS = 2  # significant digits kept of a measured rate
# Plausible encoded rates: 8 kbps mp3 is 1,000 B/s, 192 kHz x 8 channels of float64 12 MB/s.
MIN_RATE, MAX_RATE = 500.0, 50_000_000.0


def calibrate_rates(
    candidates: Iterable[tuple[str, int]], per_extension: int
) -> tuple[dict[str, float], dict]:
    """Bytes per second of audio per extension, measured on a small sample.

    Args:
        candidates: ``(uri, size)`` in the plan's seeded order; only the first
            :data:`SCAN_LIMIT` are looked at.
        per_extension: files sampled per extension; 0 disables calibration (table rates).

    Returns:
        ``(rates, report)``: the rate to use for every extension seen or in the table, and the
        ``calibration`` section of ``plan.json`` (per extension: rate, table rate, files
        sampled and measured, whether calibrated, and the first failure if any).
    """
    samples: dict[str, list[tuple[str, int]]] = {}
    if per_extension > 0:
        for n, (uri, size) in enumerate(candidates):
            if n >= SCAN_LIMIT:
                break
            picked = samples.setdefault(suffix(uri), [])
            if len(picked) < per_extension and 0 < size <= MAX_SAMPLE_BYTES:
                picked.append((uri, size))
    rates = {ext: float(rate) for ext, rate in INPUT_BYTES_PER_SECOND.items()}
    extensions: dict[str, dict] = {}
    for ext, picked in sorted(samples.items()):
        table = INPUT_BYTES_PER_SECOND.get(ext, DEFAULT_INPUT_BYTES_PER_SECOND)
        measured, failure = [], None
        for uri, size in picked:
            try:
                measured.append(measure_rate(uri, size))
            except Exception as e:  # any failure (decoder, S3, header) only loses one vote
                log.debug("calibration: %s: %s", uri, _reason(e))
                failure = failure or {"uri": uri, "reason": _reason(e)}
        entry: dict = {"sampled": len(picked), "measured": len(measured), "table": table}
        if measured:
            rates[ext] = _round(statistics.median(measured))
            entry.update(calibrated=True, min=round(min(measured)), max=round(max(measured)))
        else:
            rates[ext] = float(table)
            entry["calibrated"] = False
            if failure:
                log.warning(
                    "calibration: no readable %s sample (%d tried; e.g. %s: %s); using the "
                    "table rate %d B/s",
                    ext,
                    len(picked),
                    failure["uri"],
                    failure["reason"],
                    table,
                )
        extensions[ext] = {"bytes_per_second": rates[ext], **entry}
        if failure:
            extensions[ext]["first_failure"] = failure
    if extensions:
        log.info(
            "calibrated bytes/s: %s",
            ", ".join(
                f"{e} {v['bytes_per_second']:g} ({v['measured']}/{v['sampled']})"
                for e, v in extensions.items()
            ),
        )
    report = {
        "files_per_extension": per_extension,
        "max_sample_bytes": MAX_SAMPLE_BYTES,
        "scan_limit": SCAN_LIMIT,
        "rounding": f"median rounded to {RATE_DIGITS} significant digits",
        "extensions": extensions,
    }
    return rates, report


def measure_rate(uri: str, size: int) -> float:
    """Encoded bytes per second of one file: ``size`` over its header duration.

    Raises:
        ValueError: the header gives no plausible duration.
        OSError, soundfile.SoundFileError: the file cannot be opened or is not audio.
    """
    if storage.is_local(uri):
        info = sf.info(str(storage.local_path(uri)))
    else:
        with storage.open_read(uri) as f:
            info = sf.info(f)
    seconds = info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else 0.0
    rate = size / seconds if seconds > 0 else 0.0
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(
            f"{uri}: implausible header duration {seconds:g} s for {size} bytes "
            f"({info.frames} frames at {info.samplerate} Hz)"
        )
    return rate


def _round(rate: float) -> float:
    digits = RATE_DIGITS - 1 - math.floor(math.log10(rate))
    return float(round(rate, digits))


def _reason(e: Exception) -> str:
    text = getattr(e, "error_string", None) or str(e)
    return f"{type(e).__name__}: {text}"
