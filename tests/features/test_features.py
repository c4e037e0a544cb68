"""Tests for musicoder.features: agreement with librosa (the reference), shapes, edge cases."""

import librosa
import numpy as np
import pytest
import torch

from musicoder import features as fx
from musicoder.features.extract import delta
from musicoder.features.filters import chroma_filterbank
from musicoder.demo_corpus import render_track

SR = 22050
HOP = 1024
N_FFT = 2048
CQT_KW = {
    "sr": SR,
    "hop_length": HOP,
    "fmin": librosa.note_to_hz("C1"),
    "n_bins": 144,
    "bins_per_octave": 24,
}


def mean_channel_corr(ours: np.ndarray, ref: np.ndarray) -> float:
    """Mean Pearson correlation over channels (rows) that vary in both inputs."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    keep = (ours.std(1) > 1e-6) & (ref.std(1) > 1e-6)
    assert keep.sum() >= 0.9 * len(keep), "too many constant channels: test audio too plain"
    a = ours[keep] - ours[keep].mean(1, keepdims=True)
    b = ref[keep] - ref[keep].mean(1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))).mean())


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """~17 s of demo-corpus music: four genres (instruments with harmonics and envelopes, bass,
    drums), then a mix buried in white noise at -20 dB."""
    parts = [
        render_track(genre, 11, 3.5, SR)[0] for genre in ("rock", "jazz", "classical", "electronic")
    ]
    mix = render_track("hiphop", 12, 3.0, SR)[0]
    noise = np.random.default_rng(0).standard_normal(len(mix)) * 0.1 * np.abs(mix).max()
    return np.concatenate(parts + [mix + noise.astype(np.float32)])


@pytest.fixture(scope="module")
def ours(music) -> np.ndarray:
    """Our musicoder324 features, (channels, frames) like librosa."""
    return fx.extract_features(torch.from_numpy(music), out_dtype=torch.float32).numpy().T


@pytest.fixture(scope="module")
def reference(music) -> dict[str, np.ndarray]:
    """librosa's version of each block, (channels, frames)."""
    stft = {"sr": SR, "n_fft": N_FFT, "hop_length": HOP}
    mfcc = librosa.feature.mfcc(y=music, n_mfcc=20, n_mels=128, **stft)
    return {
        "chroma": librosa.feature.chroma_stft(y=music, tuning=0.0, **stft),
        "mfcc": mfcc,
        "delta": librosa.feature.delta(mfcc),
        "mel": np.log(librosa.feature.melspectrogram(y=music, n_mels=128, **stft) + 1e-6),
        "cqt": np.log(np.abs(librosa.cqt(music, **CQT_KW)) + 1e-6),
    }


@pytest.mark.parametrize(
    "block,threshold",
    [("chroma", 0.95), ("mfcc", 0.99), ("delta", 0.99), ("mel", 0.99), ("cqt", 0.95)],
)
def test_blocks_correlate_with_librosa(ours, reference, block, threshold):
    where = fx.channel_blocks()[block]
    assert mean_channel_corr(ours[where], reference[block]) >= threshold


def test_mel_mfcc_chroma_values_match_librosa(ours, reference):
    # Same formulas, so not just correlated: equal up to float32 rounding.
    blocks = fx.channel_blocks()
    for name, atol in (("chroma", 1e-4), ("mfcc", 0.05), ("delta", 0.01), ("mel", 0.01)):
        np.testing.assert_allclose(ours[blocks[name]], reference[name], atol=atol, err_msg=name)


def test_cqt_matches_exact_librosa_cqt_in_every_octave(music, ours, reference):
    """librosa's default drops 1% of each kernel's energy (sparsity); without that the two
    octave-wise CQTs agree closely in every octave, C1 included, and on the same scale."""
    exact = np.log(np.abs(librosa.cqt(music, sparsity=0.0, **CQT_KW)) + 1e-6)
    cqt = ours[fx.channel_blocks()["cqt"]]
    for octave in range(6):
        rows = slice(24 * octave, 24 * octave + 24)
        assert mean_channel_corr(cqt[rows], exact[rows]) >= 0.99, octave
    assert np.median(np.abs(cqt - exact)) < 0.05  # log units: same normalisation as librosa
    assert abs(np.mean(cqt - reference["cqt"])) < 0.1


def test_cqt_resolves_lowest_octave():
    """A bass note E1 (41.2 Hz) peaks in its own bin: two bins above C#1 (semitone = 2 bins)."""
    t = np.arange(3 * SR) / SR
    note = sum(np.sin(2 * np.pi * 41.2034 * k * t) / k for k in range(1, 4)).astype(np.float32)
    cqt = fx.extract_features(torch.from_numpy(note), out_dtype=torch.float32)
    lowest = cqt[10:-10, fx.channel_blocks()["cqt"]][:, :24].mean(0)
    assert int(lowest.argmax()) == 8  # E1 is 4 semitones above C1


def test_filterbanks_match_librosa():
    cfg = fx.preset_config(fx.MUSICODER324)
    np.testing.assert_allclose(
        chroma_filterbank(cfg), librosa.filters.chroma(sr=SR, n_fft=N_FFT, tuning=0.0), atol=1e-6
    )
    mel, start = torch.zeros(N_FFT // 2 + 1, 128), 0  # rebuild the dense bank from its blocks
    for lo, hi, weights in fx.get_extractor(cfg).mel_groups:
        mel[lo:hi, start : start + weights.shape[1]] = weights
        start += weights.shape[1]
    np.testing.assert_allclose(
        mel.T.numpy(), librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=128), atol=1e-6
    )


@pytest.mark.parametrize("frames", [9, 10, 57])
def test_delta_matches_librosa_including_edges(frames):
    data = np.random.default_rng(frames).standard_normal((1, frames, 5)).astype(np.float32)
    ours = delta(torch.from_numpy(data), 9)[0].numpy().T
    np.testing.assert_allclose(ours, librosa.feature.delta(data[0].T), atol=1e-5)


def test_delta_on_fewer_frames_than_width_is_the_overall_slope():
    line = torch.arange(5, dtype=torch.float32)[None, :, None] * 2.0 + 1.0  # slope 2
    assert torch.allclose(delta(line, 9), torch.full_like(line, 2.0))
    assert torch.equal(delta(line[:, :1], 9), torch.zeros(1, 1, 1))


@pytest.mark.filterwarnings("ignore:n_fft=2048 is too large")
@pytest.mark.parametrize("samples", [1, 1023, 1024, 22050, 22050 * 3 + 517])
def test_frame_count_matches_librosa(samples):
    expected = librosa.stft(np.zeros(samples, np.float32), n_fft=N_FFT, hop_length=HOP).shape[1]
    assert fx.num_frames(samples) == expected
    x = torch.from_numpy(np.random.default_rng(samples).uniform(-0.5, 0.5, samples)).float()
    assert fx.extract_features(x).shape == (expected, 324)
    assert fx.extract_features(x, fx.LOGMEL128).shape == (expected, 128)


def test_layout_of_presets():
    assert fx.num_channels(fx.MUSICODER324) == 324 and fx.num_channels(fx.LOGMEL128) == 128
    assert fx.channel_blocks() == {
        "chroma": slice(0, 12),
        "mfcc": slice(12, 32),
        "delta": slice(32, 52),
        "mel": slice(52, 180),
        "cqt": slice(180, 324),
    }
    assert fx.channel_blocks(fx.LOGMEL128) == {"mel": slice(0, 128)}


def test_batched_equals_per_item_and_dtypes(music):
    batch = torch.from_numpy(np.stack([music[: 5 * SR], music[5 * SR : 10 * SR], music[-5 * SR :]]))
    assert fx.extract_features(batch).shape == (3, fx.num_frames(5 * SR), 324)
    assert fx.extract_features(batch).dtype == torch.float16
    out = fx.extract_features(batch, out_dtype=torch.float32)
    for i in range(3):
        single = fx.extract_features(batch[i], out_dtype=torch.float32)
        assert single.shape == (fx.num_frames(5 * SR), 324) and single.dtype == torch.float32
        torch.testing.assert_close(out[i], single, atol=1e-3, rtol=1e-4)


def test_logmel128_is_the_mel_block_of_musicoder324(music):
    x = torch.from_numpy(music[: 4 * SR])
    full = fx.extract_features(x, out_dtype=torch.float32)
    torch.testing.assert_close(
        fx.extract_features(x, fx.LOGMEL128, out_dtype=torch.float32),
        full[:, fx.channel_blocks()["mel"]],
    )


def test_deterministic_and_input_untouched(music):
    x = torch.from_numpy(music[: 3 * SR].copy())
    before = x.clone()
    assert torch.equal(fx.extract_features(x), fx.extract_features(x))
    assert torch.equal(x, before)
    assert fx.get_extractor(fx.MUSICODER324) is fx.get_extractor("musicoder324", "cpu")


@pytest.mark.parametrize("samples", [0, 1, 100, 2047, 3 * SR])
@pytest.mark.parametrize("kind", ["silence", "tiny", "loud"])
def test_always_finite(samples, kind):
    rng = np.random.default_rng(samples)
    x = {
        "silence": np.zeros(samples),
        "tiny": rng.standard_normal(samples) * 1e-9,
        "loud": np.sign(rng.standard_normal(samples)) * 8.0,
    }[kind]
    for preset in (fx.MUSICODER324, fx.LOGMEL128):
        out = fx.extract_features(torch.from_numpy(x).float(), preset)
        assert out.shape == (fx.num_frames(samples), fx.num_channels(preset))
        assert torch.isfinite(out).all()


def test_bad_input_and_config_raise():
    with pytest.raises(ValueError, match="waveform"):
        fx.extract_features(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="out_dtype"):
        fx.extract_features(torch.zeros(100), out_dtype=torch.int16)
    with pytest.raises(ValueError, match="preset"):
        fx.preset_config("mfcc13")
    with pytest.raises(ValueError, match="hop_length"):
        fx.FeatureConfig(hop_length=1000)  # 6 CQT octaves need a hop divisible by 2**6
    with pytest.raises(ValueError, match="Nyquist"):
        fx.FeatureConfig(sample_rate=4000)
    fx.FeatureConfig(preset=fx.LOGMEL128, hop_length=1000)  # no CQT: any hop


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu(music):
    x = torch.from_numpy(music[: 10 * SR])
    cpu = fx.extract_features(torch.stack([x, x.flip(0)]), out_dtype=torch.float32)
    gpu = fx.extract_features(torch.stack([x, x.flip(0)]).cuda(), out_dtype=torch.float32)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=0.05, rtol=1e-3)
