"""Decode any common audio file to mono float32 at a target rate, streaming and defensively.

Whole corpora of user music go through here, so it must survive anything: truncated downloads,
lying headers, non-audio named ``.mp3``, silence, odd rates and channel counts. Every file is
decoded block by block with libsndfile (``soundfile``: wav, flac, ogg/vorbis/opus, mp3, aiff,
...), downmixed to mono by the channel mean, resampled with a stateful ``soxr.ResampleStream``.
``load_audio`` and ``iter_segments`` share that pipeline: segments of a track are sample for sample
the track loaded whole, and the stream equals soxr's one-shot output (no seams at block edges).

Rules (DESIGN §4), each a subclass of :class:`AudioError` whose ``str`` is ``"<uri>: <reason>"``:

* unreadable / not audio / a decoder failure before the first sample -> ``UnreadableAudioError``;
  native rate outside 8-192 kHz -> ``SampleRateError``; 0 decoded frames -> ``EmptyAudioError``
* fewer than ``min_seconds`` decoded -> ``TooShortError``; peak below 1e-4 -> ``SilentAudioError``

Durations come from decoded frames, never from headers. A file that breaks part-way (libsndfile
raises, stops short of the length its header claims, or logs a truncated data chunk or ogg
stream) keeps its decoded prefix if that prefix passes the rules, with ``AudioInfo.truncated``.
Non-finite samples (NaN/inf in float files) are corruption: decoding stops at the first one.
Finite samples beyond full scale are clipped to [-1, 1], so features and statistics stay finite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
import torch

from musicoder import storage

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
MIN_NATIVE_RATE = 8_000
MAX_NATIVE_RATE = 192_000
MAX_CHANNELS = 1024  # libsndfile's own limit; also bounds the per-block buffer below
MIN_SECONDS = 2.0
SILENCE_PEAK = 1e-4
RESAMPLE_QUALITY = "HQ"  # soxr preset, the same for every caller so all paths agree
CLIP_LEVEL = 0.999  # a native frame with any channel at or above this magnitude counts as clipped
BLOCK_SECONDS = 1.0  # native audio decoded per read; a part-way failure loses at most this
BLOCK_VALUES = 1 << 20  # cap on frames x channels per read (4 MiB of float32)
MP3_HEADER_SLACK = 0.01  # mp3 lengths are estimates without a Xing/LAME tag
SPOOL_CHUNK = 1 << 20
# libsndfile log lines that reveal a cut file it otherwise reads silently as a shorter one.
_DATA_CHUNK_RE = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_OGG_NO_EOS = "lacks an end-of-stream bit"
_UNKNOWN_FRAMES = 2**62
# Said for an existing file whose bytes no decoder (mpg123 last) recognises.
_LIBSNDFILE_MISLEADING = {
    "File does not exist or is not a regular file (possibly a pipe?).": "no decodable audio stream"
}


class AudioError(ValueError):
    """A track that cannot be used; ``str()`` is ``"<uri>: <reason>"``."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason

    def __reduce__(self):  # keep (uri, reason) across pickling, e.g. out of a Ray task
        return type(self), (self.uri, self.reason)


class UnreadableAudioError(AudioError):
    """Corrupt, not audio, or in a format libsndfile cannot decode."""


class EmptyAudioError(AudioError):
    """The file decodes to 0 frames."""


class TooShortError(AudioError):
    """Fewer than ``min_seconds`` of audio could be decoded."""


class SilentAudioError(AudioError):
    """Digital silence: peak below 1e-4 over everything decoded."""


class SampleRateError(AudioError):
    """The native sample rate is outside 8-192 kHz."""


@dataclass
class AudioInfo:
    """What decoding found out about one file."""

    uri: str
    native_rate: int
    channels: int
    seconds: float  # decoded seconds (not the header's claim); the returned clip's if capped
    truncated: bool  # decoding broke part-way; the decoded prefix was kept


@dataclass
class Segment:
    """One fixed-length piece of a track."""

    index: int
    offset_seconds: float
    samples: torch.Tensor  # float32 [n] at the requested sample rate
    clipped_fraction: float = 0.0  # share of the segment's native-rate frames that clip


class _ClipCounter:
    """Native frame positions of clipped frames, counted per range as segments move forward.

    Resampling smooths a clipped plateau below full scale, so clipping is counted in the
    decoder's native samples, per channel, before the downmix (a frame clips when any channel
    does). Positions before a counted range are dropped: memory holds the clipped frames of
    about one segment.
    """

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []

    def add(self, start: int, frames: np.ndarray) -> None:
        """Records the clipped frames of a native block `(n, channels)` that starts at `start`."""
        hit = np.flatnonzero((np.abs(frames) >= CLIP_LEVEL).any(axis=1))
        if len(hit):
            self._parts.append(hit + start)

    def count(self, start: int, end: int) -> int:
        """Clipped frames in `[start, end)`; later calls must not start before `start`."""
        positions = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int64)
        positions = positions[positions >= start]
        self._parts = [positions] if len(positions) else []
        return int(np.count_nonzero(positions < end))


class _Track:
    """One open file: native-rate blocks in, resampled mono blocks out, whole-file rules."""

    def __init__(self, uri: str, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.uri, self.sample_rate = uri, sample_rate
        self.frames = 0  # native frames decoded
        self.peak = 0.0
        self.eof = False  # the decoder reached the end (or the point where the file broke)
        self.failure: str | None = None  # why decoding stopped part-way, if it did
        self.clipped = _ClipCounter()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Track:
        with self._stack.pop_all() as stack:
            path = stack.enter_context(_local_copy(self.uri))
            try:
                self._file = stack.enter_context(sf.SoundFile(path))
            except sf.SoundFileError as exc:
                raise UnreadableAudioError(
                    self.uri, f"not decodable audio ({_detail(exc)})"
                ) from None
            self.native_rate, self.channels = self._file.samplerate, self._file.channels
            if not MIN_NATIVE_RATE <= self.native_rate <= MAX_NATIVE_RATE:
                raise SampleRateError(
                    self.uri,
                    f"sample rate {self.native_rate} Hz is outside "
                    f"{MIN_NATIVE_RATE}-{MAX_NATIVE_RATE} Hz",
                )
            if not 1 <= self.channels <= MAX_CHANNELS:
                raise UnreadableAudioError(self.uri, f"implausible channel count {self.channels}")
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _native_blocks(self) -> Iterator[np.ndarray]:
        """Yield native-rate mono float32 blocks until the end or the first failure."""
        block = max(1, min(round(self.native_rate * BLOCK_SECONDS), BLOCK_VALUES // self.channels))
        buf = np.empty((block, self.channels), np.float32)  # reused: libsndfile writes into it
        while True:
            try:
                # Unlike read(), not clamped by soundfile to the header's frame count (libsndfile
                # itself still stops at its own estimate, e.g. for a VBR mp3 without a Xing tag).
                n = self._file.buffer_read_into(buf, "float32")
            except sf.SoundFileError as exc:
                self._fail(f"decoder error: {_detail(exc)}")
                return
            if n <= 0:  # end of data; libsndfile never returns 0 frames mid-file
                self.eof = True
                return
            mono = buf[:n, 0].copy() if self.channels == 1 else buf[:n].mean(axis=1)
            finite = np.isfinite(mono)
            broken = not finite.all()
            if broken:
                mono = mono[: int(np.argmin(finite))]
            self.clipped.add(self.frames, buf[: len(mono)])
            np.clip(mono, -1.0, 1.0, out=mono)
            if len(mono):
                self.peak = max(self.peak, float(mono.max()), -float(mono.min()))
                self.frames += len(mono)
                yield mono
            if broken:
                self._fail(f"non-finite sample at {self.seconds:.2f} s")
                return

    def _fail(self, why: str) -> None:
        self.failure, self.eof = why, True  # finish() reports it

    def blocks(self) -> Iterator[np.ndarray]:
        """Yield mono float32 blocks at ``sample_rate``; the concatenation is the whole track."""
        if self.native_rate == self.sample_rate:
            yield from self._native_blocks()
            return
        stream = soxr.ResampleStream(
            self.native_rate, self.sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )
        for mono in self._native_blocks():
            out = stream.resample_chunk(mono)
            if len(out):
                yield out
        out = stream.resample_chunk(np.zeros(0, np.float32), last=True)  # flush the filter tail
        if len(out):
            yield out

    @property
    def seconds(self) -> float:
        return self.frames / self.native_rate

    def _cut_short(self) -> str | None:
        """Why a file that decoded to its end is nonetheless shorter than it should be."""
        if self.failure:
            return self.failure
        claimed = self._file.frames  # SF_COUNT_MAX when libsndfile does not know
        slack = MP3_HEADER_SLACK * claimed if self._file.format == "MP3" else 0
        if self.frames < claimed - slack and claimed < _UNKNOWN_FRAMES:
            return f"{self.frames} of the {claimed} frames the header claims"
        if self._file.format == "MP3":
            return None  # mp3 has no chunk sizes to check; extra_info makes libmpg123 print noise
        log_text = self._file.extra_info
        cut = [m for m in _DATA_CHUNK_RE.finditer(log_text) if int(m[1]) > int(m[2])]
        if cut:
            return f"data chunk claims {cut[0][1]} bytes, file holds {cut[0][2]}"
        if _OGG_NO_EOS in log_text:
            return "ogg stream ends without its end-of-stream page"
        return None

    def finish(self, min_seconds: float, *, seconds: float | None = None) -> AudioInfo:
        """Apply the whole-file rules to what was decoded and describe it.

        Raises:
            AudioError: the subclass for the first rule the decoded audio breaks.
        """
        cut = self._cut_short() if self.eof else None
        note = f" (file truncated: {cut})" if cut else ""
        if self.frames == 0:
            if self.failure:
                raise UnreadableAudioError(self.uri, f"no audio decodable: {self.failure}")
            raise EmptyAudioError(self.uri, "contains no audio frames" + note)
        if self.seconds < min_seconds:
            raise TooShortError(
                self.uri, f"only {self.seconds:.2f} s of audio, need {min_seconds:g} s" + note
            )
        if self.peak < SILENCE_PEAK:
            raise SilentAudioError(
                self.uri, f"digital silence: peak {self.peak:.2g} < {SILENCE_PEAK:g}" + note
            )
        if cut:
            log.warning("%s: truncated (%s); keeping %.2f s", self.uri, cut, self.seconds)
        return AudioInfo(
            uri=self.uri,
            native_rate=self.native_rate,
            channels=self.channels,
            seconds=self.seconds if seconds is None else seconds,
            truncated=cut is not None,
        )


def _detail(exc: sf.SoundFileError) -> str:
    """libsndfile's reason without the path it repeats (and without one misleading message)."""
    text = getattr(exc, "error_string", None) or str(exc)
    return f"libsndfile: {_LIBSNDFILE_MISLEADING.get(text, text).rstrip('.')}"


@contextlib.contextmanager
def _local_copy(uri: str) -> Iterator[str]:
    """A local path for ``uri``: the file itself, or a temporary on-disk spool of a remote one.

    libsndfile needs a seekable file for several formats, and spooling to disk (not memory)
    keeps memory bounded for long tracks.
    """
    if storage.is_local(uri):
        path = storage.local_path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{uri}: no such file")
        yield str(path)
        return
    ext = os.path.splitext(uri)[1].lower()
    suffix = ext if ext in AUDIO_EXTENSIONS else ""  # a format hint; never part of the name
    with tempfile.NamedTemporaryFile(prefix="musicoder-audio-", suffix=suffix) as spool:
        with storage.open_read(uri) as src:
            shutil.copyfileobj(src, spool, SPOOL_CHUNK)
        spool.flush()
        yield spool.name


def load_audio_with_info(
    uri: str,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    *,
    min_seconds: float = MIN_SECONDS,
) -> tuple[torch.Tensor, AudioInfo]:
    """Decode a file (or its first ``max_seconds``) to one mono tensor.

    Args:
        uri: local path, ``file://`` or ``s3://`` URI.
        sample_rate: output rate in Hz.
        max_seconds: decode only about this much (plus one block) and return exactly this much
            at most; the rules then apply to the decoded part, with the too-short threshold
            lowered to ``max_seconds`` when that is smaller than ``min_seconds``.
        min_seconds: shortest acceptable decoded duration.

    Returns:
        ``(samples, info)``: float32 ``[n]`` at ``sample_rate``, and what was decoded.

    Raises:
        AudioError: a subclass naming the rule the file breaks (see the module docstring).
        FileNotFoundError: the file does not exist.
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    chunks, total = [], 0
    with _Track(uri, sample_rate) as track:
        for block in track.blocks():
            chunks.append(block)
            total += len(block)
            if limit is not None and total >= limit:  # enough: the rest stays undecoded
                break
        samples = np.concatenate(chunks)[:limit] if chunks else np.zeros(0, np.float32)
        capped = limit is not None and not track.eof
        info = track.finish(
            min_seconds if max_seconds is None else min(min_seconds, max_seconds),
            seconds=len(samples) / sample_rate if capped else None,
        )
    return torch.from_numpy(samples), info


def load_audio(
    uri: str,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    *,
    min_seconds: float = MIN_SECONDS,
) -> torch.Tensor:
    """Decode a file to mono float32 ``[n]``; see :func:`load_audio_with_info`."""
    return load_audio_with_info(uri, sample_rate, max_seconds, min_seconds=min_seconds)[0]


class SegmentReader:
    """Iterable of the :class:`Segment` s of one track, decoded lazily with bounded memory.

    Whole-file rules (too short, silent) can only be decided at the end, so iteration may raise
    an :class:`AudioError` after segments were yielded: treat the file as accepted only when
    iteration finishes without raising. ``info`` is set then (and is ``None`` before).
    Each iteration decodes the file afresh.
    """

    def __init__(self, uri: str, seconds: float, sample_rate: int, min_seconds: float) -> None:
        if seconds <= 0 or min_seconds < 0 or sample_rate <= 0:
            raise ValueError(
                f"need seconds > 0, min_seconds >= 0 and sample_rate > 0, "
                f"got {seconds}, {min_seconds}, {sample_rate}"
            )
        self.uri, self.sample_rate, self.min_seconds = uri, sample_rate, min_seconds
        self.segment_samples = max(1, round(seconds * sample_rate))
        self.info: AudioInfo | None = None

    def _segment(self, index: int, samples: np.ndarray, track: _Track) -> Segment:
        offset = index * self.segment_samples / self.sample_rate
        scale = track.native_rate / self.sample_rate  # output sample -> native frame
        first = round(index * self.segment_samples * scale)
        last = max(first + 1, min(round((index * self.segment_samples + len(samples)) * scale),
                                  track.frames))  # fmt: skip
        clipped = track.clipped.count(first, last) / (last - first)
        return Segment(index, offset, torch.from_numpy(samples), clipped)

    def __iter__(self) -> Iterator[Segment]:
        self.info = None
        size, index, fill = self.segment_samples, 0, 0
        buf = np.empty(size, np.float32)
        with _Track(self.uri, self.sample_rate) as track:
            for block in track.blocks():
                while len(block):
                    take = min(size - fill, len(block))
                    buf[fill : fill + take] = block[:take]
                    fill, block = fill + take, block[take:]
                    if fill == size:
                        yield self._segment(index, buf, track)
                        buf, index, fill = np.empty(size, np.float32), index + 1, 0
            if fill and fill >= self.min_seconds * self.sample_rate:  # else a dropped remainder
                yield self._segment(index, buf[:fill].copy(), track)
            self.info = track.finish(self.min_seconds)


def iter_segments(
    uri: str, seconds: float, sample_rate: int = SAMPLE_RATE, *, min_seconds: float = MIN_SECONDS
) -> SegmentReader:
    """Stream a track as consecutive ``seconds``-long mono segments.

    The last segment may be shorter, if it still holds at least ``min_seconds``; a shorter
    remainder is dropped. Memory stays bounded by one segment plus one decode block, whatever
    the track's length.

    Args:
        uri: local path, ``file://`` or ``s3://`` URI.
        seconds: segment length.
        sample_rate: output rate in Hz.
        min_seconds: shortest acceptable track, and shortest kept final segment.

    Returns:
        A :class:`SegmentReader`; iterate it for :class:`Segment` objects.

    Raises:
        AudioError: during iteration, possibly after segments were yielded (see SegmentReader).
        FileNotFoundError: during iteration, when the file does not exist.
    """
    return SegmentReader(uri, seconds, sample_rate, min_seconds)
