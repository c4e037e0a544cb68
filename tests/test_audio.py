"""Tests for musicoder.audio: formats, widths, rates, channels, bad input, streaming, memory."""

from __future__ import annotations

import pickle
import shutil
import threading
import tracemalloc

import numpy as np
import psutil
import pytest
import soundfile as sf
import soxr
import torch
from fixtures_audio import AUDIO_CASES, synth, truncate_file, write_tone

from musicoder import audio

SR = audio.SAMPLE_RATE


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _segments(uri, seconds, **kw) -> list[audio.Segment]:
    return list(audio.iter_segments(str(uri), seconds, **kw))


# (file name, native rate, channels, subtype); each lossless one decodes to the analytic signal.
DECODE_MATRIX = [
    ("fmt.wav", 44100, 2, "PCM_16"),
    ("fmt.flac", 44100, 2, "PCM_24"),
    ("fmt.ogg", 44100, 2, None),
    ("fmt.mp3", 44100, 2, None),
    ("mp3_8k.mp3", 8000, 1, None),
    ("mp3_22k.mp3", 22050, 1, None),
    ("ogg_8k.ogg", 8000, 1, None),
    *[(f"rate_{sr}.wav", sr, 1, "PCM_16") for sr in (8000, 11025, 22050, 44100, 48000, 96000)],
    ("rate_192000.flac", 192000, 1, "PCM_24"),
    *[(f"width_{st}.wav", 44100, 1, st) for st in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32")],
    *[(f"width_{st}.wav", 44100, 1, st) for st in ("FLOAT", "DOUBLE")],
    *[(f"ch{ch}.flac", 48000, ch, "PCM_16") for ch in (1, 2, 6)],
    ("ch6.ogg", 48000, 6, None),
    ("ch6.wav", 44100, 6, "PCM_16"),
]


@pytest.mark.parametrize(("name", "native", "channels", "subtype"), DECODE_MATRIX)
def test_decodes_length_and_content(tmp_path, name, native, channels, subtype):
    seconds = 3.0
    path = write_tone(tmp_path / name, seconds, native, channels=channels, subtype=subtype, noise=0)
    x, info = audio.load_audio_with_info(str(path))
    assert x.dtype == torch.float32 and x.ndim == 1
    assert abs(len(x) - seconds * SR) <= 2  # from decoded frames, resampled
    assert info == audio.AudioInfo(str(path), native, channels, pytest.approx(seconds), False)
    # Channel c has gain 1 - 0.1 c, so the mono mean is the analytic signal times the mean gain.
    ref = synth(seconds, SR, noise=0)[:, 0] * np.mean(1 - 0.1 * np.arange(channels))
    n, edge = min(len(x), len(ref)), 220
    got, ref = x.numpy()[edge : n - edge], ref[edge : n - edge]
    lossy = name.endswith((".ogg", ".mp3")) or subtype == "PCM_U8"
    assert _corr(got, ref) > (0.99 if lossy else 0.9999)
    if not lossy:
        assert np.abs(got - ref).max() < 2e-3


# (format, subtype) to write each listed extension; a new extension needs a row here.
FORMAT_OF_EXTENSION = {
    ".wav": ("WAV", None),
    ".flac": ("FLAC", None),
    ".ogg": ("OGG", None),
    ".oga": ("OGG", None),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", None),
    ".aiff": ("AIFF", "PCM_16"),
    ".aif": ("AIFF", "PCM_16"),
    ".au": ("AU", "PCM_16"),
}


@pytest.mark.parametrize("ext", audio.AUDIO_EXTENSIONS)
def test_every_listed_extension_decodes(tmp_path, ext):
    """Every path lists files by AUDIO_EXTENSIONS (.opus was once listed by some, not others)."""
    fmt, subtype = FORMAT_OF_EXTENSION[ext]
    path = write_tone(tmp_path / f"t{ext}", 3.0, 48000, channels=2, format=fmt, subtype=subtype)
    x, info = audio.load_audio_with_info(str(path))
    assert (info.native_rate, info.channels, info.truncated) == (48000, 2, False)
    assert abs(info.seconds - 3.0) < 0.1 and torch.isfinite(x).all() and x.abs().max() > 0.1


def test_other_target_rate(tmp_path):
    path = write_tone(tmp_path / "a.flac", 3.0, 44100, noise=0)
    x = audio.load_audio(str(path), sample_rate=16000)
    assert len(x) == 48000
    assert _corr(x.numpy()[160:-160], synth(3.0, 16000, noise=0)[160:-160, 0]) > 0.9999


@pytest.mark.parametrize("name", list(AUDIO_CASES))
def test_audio_cases(bad_audio_dir, name):
    case = bad_audio_dir[name]
    uri = str(case.path)
    if case.error:
        cls = getattr(audio, case.error)
        with pytest.raises(cls) as err:
            audio.load_audio_with_info(uri)
        assert type(err.value) is cls and isinstance(err.value, audio.AudioError)
        assert err.value.uri == uri and str(err.value) == f"{uri}: {err.value.reason}"
        assert len(err.value.reason) > 10 and "\n" not in str(err.value)
        with pytest.raises(cls):
            _segments(uri, 1.0)
        return
    x, info = audio.load_audio_with_info(uri)
    lo, hi = case.seconds
    assert lo - 1e-3 <= info.seconds <= hi + 1e-3
    assert info.truncated == case.truncated
    assert abs(len(x) - info.seconds * SR) <= 2
    reader = audio.iter_segments(uri, 1.0)
    assert sum(len(s.samples) for s in reader) <= len(x)
    assert reader.info == info


def test_error_reasons_are_human():
    err = audio.SampleRateError("s3://b/k.wav", "sample rate 4000 Hz is outside 8000-192000 Hz")
    assert str(err) == "s3://b/k.wav: sample rate 4000 Hz is outside 8000-192000 Hz"
    back = pickle.loads(pickle.dumps(err))  # Ray ships exceptions between processes
    assert type(back) is audio.SampleRateError and (back.uri, back.reason) == (err.uri, err.reason)
    assert isinstance(err, ValueError)


def test_reason_names_the_problem(bad_audio_dir):
    def reason(name: str) -> str:
        with pytest.raises(audio.AudioError) as err:
            audio.load_audio(str(bad_audio_dir[name].path))
        return err.value.reason

    assert "4000 Hz" in reason("rate_4k.wav")
    assert "1.00 s" in reason("one_second.wav")
    assert "silence" in reason("silence.flac")
    assert "truncated" in reason("truncated_short.wav")
    assert "no decodable audio" in reason("random_bytes.mp3")
    assert "does not exist" not in reason("random_bytes.mp3")


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_truncated_prefix_is_the_original_audio(tmp_path, ext):
    whole = write_tone(tmp_path / f"whole{ext}", 6.0, 22050)
    cut = truncate_file(shutil.copy(whole, tmp_path / f"cut{ext}"), 0.7)
    full = audio.load_audio(str(whole), 22050)  # native rate: no resampler edge effects
    prefix, info = audio.load_audio_with_info(str(cut), 22050)
    assert info.truncated and 2.0 <= info.seconds < 6.0 * 0.7 + 0.01
    assert len(prefix) == round(info.seconds * 22050)
    assert np.array_equal(prefix.numpy(), full.numpy()[: len(prefix)])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        audio.load_audio(str(tmp_path / "nope.wav"))


@pytest.mark.parametrize("seconds", [0.37, 2.0, 3.0])
def test_segments_equal_whole_file_and_one_shot_resampler(tmp_path, seconds):
    path = write_tone(tmp_path / "a.flac", 7.3, 44100, channels=2)
    segs = _segments(path, seconds, min_seconds=0.0)
    whole = audio.load_audio(str(path), min_seconds=0.0).numpy()
    size = round(seconds * SR)
    assert [s.index for s in segs] == list(range(len(segs)))
    assert all(len(s.samples) == size for s in segs[:-1]) and 0 < len(segs[-1].samples) <= size
    assert [s.offset_seconds for s in segs] == [i * size / SR for i in range(len(segs))]
    joined = np.concatenate([s.samples.numpy() for s in segs])
    assert np.array_equal(joined, whole)  # one decode pipeline: identical
    native = sf.read(path, dtype="float32")[0].mean(axis=1)
    one_shot = soxr.resample(native, 44100, SR, quality=audio.RESAMPLE_QUALITY)
    np.testing.assert_allclose(joined, one_shot, atol=1e-6)  # block edges leave no seams


def test_segments_count_clipping_at_the_native_rate(tmp_path):
    """A 44.1 kHz stereo master whose left channel is hard-clipped in the middle second: each
    1 s segment's clipped_fraction is the share of native frames at full scale in any channel,
    which the downmixed 22.05 kHz audio no longer shows (resampling rounds plateaus off too)."""
    rate = 44100
    t = np.arange(3 * rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 220 * t)
    left[rate : 2 * rate] *= 3.0  # peaks of 1.5: clipped to full scale when written
    data = np.stack([np.clip(left, -1, 1), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
    path = tmp_path / "clipped.wav"
    sf.write(path, data, rate, subtype="PCM_16")
    written = sf.read(path, dtype="float32")[0]
    expected = [
        float((np.abs(written[i * rate : (i + 1) * rate]) >= audio.CLIP_LEVEL).any(1).mean())
        for i in range(3)
    ]
    segments = list(audio.iter_segments(str(path), 1.0, 22050))
    got = [s.clipped_fraction for s in segments]
    assert expected[0] == expected[2] == 0.0 and expected[1] > 0.2
    assert got == pytest.approx(expected, abs=2e-4)  # segment edges: a frame or two apart
    resampled = (segments[1].samples.abs() >= audio.CLIP_LEVEL).float().mean().item()
    assert resampled < 0.6 * expected[1]  # why it is counted before the downmix and resampling


def test_remainder_rule(tmp_path):
    path = str(write_tone(tmp_path / "a.wav", 7.3, 48000))
    assert [len(s.samples) for s in _segments(path, 3.0)] == [3 * SR, 3 * SR]  # 1.3 s dropped
    kept = [len(s.samples) for s in _segments(path, 3.0, min_seconds=1.0)]
    assert kept[:2] == [3 * SR, 3 * SR] and abs(kept[2] - 1.3 * SR) <= 2
    five = str(write_tone(tmp_path / "b.wav", 5.0, 48000))
    assert [len(s.samples) for s in _segments(five, 3.0)] == [3 * SR, 2 * SR]


@pytest.mark.parametrize(
    ("name", "error"), [("one_second.wav", "TooShortError"), ("silence.flac", "SilentAudioError")]
)
def test_whole_file_rules_raise_after_segments(bad_audio_dir, name, error):
    reader = audio.iter_segments(str(bad_audio_dir[name].path), 0.25)
    got = []
    with pytest.raises(getattr(audio, error)):
        for seg in reader:
            got.append(seg)
    assert len(got) >= 3  # segments came first; the verdict only at the end
    assert reader.info is None


def test_max_seconds_decodes_only_what_it_needs(tmp_path):
    path = write_tone(tmp_path / "a.flac", 10.0, 44100)
    full = audio.load_audio(str(path)).numpy()
    capped, info = audio.load_audio_with_info(str(path), max_seconds=2.5)
    assert len(capped) == round(2.5 * SR) and info.seconds == 2.5
    assert np.array_equal(capped.numpy(), full[: len(capped)])
    assert len(audio.load_audio(str(path), max_seconds=60.0)) == len(full)
    # Shorter than min_seconds on request: the threshold follows the cap.
    assert len(audio.load_audio(str(path), max_seconds=1.0)) == SR
    # Breakage after the cap is never decoded, so never seen.
    cut = truncate_file(shutil.copy(path, tmp_path / "cut.flac"), 0.5)
    _, info = audio.load_audio_with_info(str(cut), max_seconds=2.0)
    assert not info.truncated
    assert audio.load_audio_with_info(str(cut))[1].truncated


def test_nan_and_overs_in_float_files(tmp_path):
    x = synth(4.0, 22050)
    x[: 22050 // 2] *= 8.0  # beyond full scale: clipped
    x[3 * 22050 + 5] = np.inf
    sf.write(tmp_path / "f.wav", x, 22050, subtype="FLOAT")
    y, info = audio.load_audio_with_info(str(tmp_path / "f.wav"), 22050)
    assert info.truncated and len(y) == 3 * 22050 + 5
    assert np.isfinite(y.numpy()).all() and y.abs().max() == 1.0


def test_remote_uri_is_spooled_to_disk(tmp_path, monkeypatch):
    path = write_tone(tmp_path / "a.ogg", 3.0, 44100)
    local = audio.load_audio(str(path)).numpy()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    monkeypatch.setattr(audio.tempfile, "tempdir", str(spool_dir))
    remote_uri = "s3://bucket/dir/a.ogg"  # served from the local file below, no S3 needed
    real_is_local, real_open = audio.storage.is_local, audio.storage.open_read
    monkeypatch.setattr(
        audio.storage, "is_local", lambda uri: uri != remote_uri and real_is_local(uri)
    )
    seen = []

    def open_read(uri):
        seen.append(uri)
        return real_open(str(path))

    monkeypatch.setattr(audio.storage, "open_read", open_read)
    remote = audio.load_audio(remote_uri).numpy()
    assert seen == [remote_uri] and np.array_equal(remote, local)
    assert list(spool_dir.iterdir()) == []  # spool removed
    with pytest.raises(audio.TooShortError, match=r"^s3://bucket/dir/a\.ogg: "):
        audio.load_audio(remote_uri, min_seconds=5.0)


def test_rejects_bad_arguments(tmp_path):
    path = str(write_tone(tmp_path / "a.wav", 3.0))
    with pytest.raises(ValueError, match="seconds"):
        audio.iter_segments(path, 0.0)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.load_audio(path, sample_rate=0)
    with pytest.raises(ValueError, match="max_seconds"):
        audio.load_audio(path, max_seconds=0.0)


def test_long_track_streams_in_bounded_memory(tmp_path):
    minutes = 20
    path = write_tone(tmp_path / "long.flac", minutes * 60.0, 44100, loop_seconds=30.0)
    whole_mb = minutes * 60 * SR * 4 / 2**20  # ~101 MiB if the output were held at once
    proc = psutil.Process()
    base_rss, peak_rss, done = proc.memory_info().rss, [0], threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.01):
            peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    tracemalloc.start()
    try:
        reader = audio.iter_segments(str(path), 30.0)
        count = total = 0
        for seg in reader:
            count, total = count + 1, total + len(seg.samples)
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    assert count == minutes * 2 and total == minutes * 60 * SR
    assert reader.info.seconds == minutes * 60 and not reader.info.truncated
    assert traced_peak < 16, f"traced peak {traced_peak:.1f} MiB"
    assert (peak_rss[0] - base_rss) / 2**20 < whole_mb / 2
