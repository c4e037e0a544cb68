"""Feature-extraction benchmark: our musicoder324 extractor against the librosa pipeline.

Run from the repository root (about a minute):

    .venv/bin/python bench/features.py [--seconds 180] [--repeats 3]

Renders minutes of demo-corpus music (two genres, one per channel) at 44.1 kHz stereo, writes it as WAV
and OGG/Vorbis to a temporary folder, then measures on one thread, after a warm-up call per side:
decoding (soundfile), resampling to 22,050 Hz (soxr), our features, and the equivalent librosa
pipeline (one STFT -> chroma, mel, MFCC, delta; plus a 144-bin CQT). Speeds are x realtime per
core: audio seconds over the process CPU time of the best of ``--repeats`` runs (CPU time, so
other jobs on a shared machine do not skew the numbers; wall-clock speeds are reported too).
With CUDA, it adds batched extraction of 30 s segments on the GPU (wall clock, synchronised).
Prints one JSON line (DESIGN §10: ratios against a reference measured in the same run).
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch/numba start their thread pools

import argparse
import datetime
import json
import tempfile
import time
from collections.abc import Callable

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch

from musicoder.demo_corpus import render_track
from musicoder.features import MUSICODER324, extract_features

NATIVE_RATE = 44100
RATE = 22050
GPU_SEGMENT_SECONDS = 30
GPU_BATCH = 64


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best CPU and best wall seconds of ``repeats`` calls, after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def librosa_pipeline(y: np.ndarray) -> list[np.ndarray]:
    """The musicoder324 blocks computed with librosa (what the tests use as reference)."""
    power = np.abs(librosa.stft(y, n_fft=2048, hop_length=1024)) ** 2
    chroma = librosa.feature.chroma_stft(S=power, sr=RATE, tuning=0.0)
    mel = librosa.feature.melspectrogram(S=power, sr=RATE, n_mels=128)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=20)
    cqt = np.abs(
        librosa.cqt(
            y,
            sr=RATE,
            hop_length=1024,
            fmin=librosa.note_to_hz("C1"),
            n_bins=144,
            bins_per_octave=24,
        )
    )
    return [chroma, mfcc, librosa.feature.delta(mfcc), np.log(mel + 1e-6), np.log(cqt + 1e-6)]


def gpu_speed(mono: np.ndarray, repeats: int) -> int | None:
    """x realtime of batched extraction on CUDA (wall clock), or None without a GPU."""
    if not torch.cuda.is_available():
        return None
    seg = GPU_SEGMENT_SECONDS * RATE
    segments = torch.from_numpy(mono[: len(mono) // seg * seg]).view(-1, seg)
    batch = segments.repeat(-(-GPU_BATCH // len(segments)), 1)[:GPU_BATCH].cuda()

    def run() -> None:
        extract_features(batch, MUSICODER324)
        torch.cuda.synchronize()

    _, wall = best_time(run, repeats)
    return round(batch.numel() / RATE / wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="audio length")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seconds, repeats = args.seconds, args.repeats

    stereo = np.stack(
        [render_track(genre, 7, seconds, NATIVE_RATE)[0] for genre in ("rock", "jazz")], axis=1
    )
    result: dict[str, object] = {
        "bench": "features",
        "date": datetime.date.today().isoformat(),
        "audio_seconds": seconds,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, subtype in (("wav", "PCM_16"), ("ogg", "VORBIS")):
            path = os.path.join(tmp, f"music.{fmt}")
            with sf.SoundFile(path, "w", NATIVE_RATE, stereo.shape[1], subtype) as out:
                for block in np.array_split(stereo, max(1, int(seconds))):  # libsndfile's
                    out.write(block)  # Vorbis encoder crashes on one huge write
            cpu, _ = best_time(lambda p=path: sf.read(p, dtype="float32"), repeats)
            result[f"decode_{fmt}_x"] = round(seconds / cpu)
    mixed = stereo.mean(1)
    cpu, _ = best_time(lambda: soxr.resample(mixed, NATIVE_RATE, RATE, quality="HQ"), repeats)
    result["resample_x"] = round(seconds / cpu)
    mono = soxr.resample(mixed, NATIVE_RATE, RATE, quality="HQ").astype(np.float32)

    waveform = torch.from_numpy(mono)
    ours_cpu, ours_wall = best_time(lambda: extract_features(waveform, MUSICODER324), repeats)
    ref_cpu, ref_wall = best_time(lambda: librosa_pipeline(mono), repeats)
    result.update(
        {
            "ours_x": round(seconds / ours_cpu),
            "librosa_x": round(seconds / ref_cpu),
            "ratio": round(ref_cpu / ours_cpu, 2),
            "ours_wall_x": round(seconds / ours_wall),
            "librosa_wall_x": round(seconds / ref_wall),
            "gpu_batched_x": gpu_speed(mono, repeats),
            "torch": torch.__version__,
            "librosa": librosa.__version__,
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
