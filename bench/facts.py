"""Per-sample facts benchmark: what the shard worker's hash, fingerprint and quality statistics
cost against the decode (and the features) of the same audio, measured in one run.

Run from the repository root (about half a minute):

    .venv/bin/python bench/facts.py [--seconds 300] [--repeats 3]

Renders minutes of demo-corpus music at 44.1 kHz mono, writes it as FLAC to a temporary folder,
then measures on one thread, as the worker runs them: decoding into 30 s segments at 22,050 Hz
(`iter_segments`: libsndfile + soxr), the musicoder324 features of those segments, and
`sample_facts` of each segment (sha256 of the PCM, Chromaprint fingerprint, loudness, silent and
clipped fractions; also each part alone). Times are process CPU seconds, best of `--repeats`.
Prints one JSON line: x realtime of each step and the facts' cost as a share of decode and of
decode + features (DESIGN §10: ratios against a reference measured in the same run).
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch start their thread pools

import argparse
import datetime
import hashlib
import json
import tempfile
import time
from collections.abc import Callable

import numpy as np
import soundfile as sf
import torch

from musicoder.audio import iter_segments
from musicoder.demo_corpus import render_track
from musicoder.features import extract_features
from musicoder.sharding.facts import fingerprint, sample_facts

NATIVE_RATE, RATE, SEGMENT = 44100, 22050, 30.0


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    genres = ("rock", "jazz", "electronic", "classical")
    per = args.seconds / len(genres)
    audio = np.concatenate([render_track(g, i, per, NATIVE_RATE)[0] for i, g in enumerate(genres)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "music.flac")
        sf.write(path, audio, NATIVE_RATE)
        segments = [s.samples for s in iter_segments(path, SEGMENT, RATE)]
        seconds = sum(len(s) for s in segments) / RATE
        waves = [s.numpy() for s in segments]
        full = [s for s in segments if len(s) == len(segments[0])]
        t = {
            "decode": _best(lambda: list(iter_segments(path, SEGMENT, RATE)), args.repeats),
            "features": _best(lambda: extract_features(torch.stack(full)), args.repeats)
            * len(segments)
            / len(full),
            "facts": _best(lambda: [sample_facts(w, RATE) for w in waves], args.repeats),
            "fingerprint": _best(lambda: [fingerprint(w, RATE) for w in waves], args.repeats),
            "pcm_sha256": _best(
                lambda: [hashlib.sha256(w.astype("<f4").tobytes()).digest() for w in waves],
                args.repeats,
            ),
        }
    result = {
        "bench": "facts",
        "date": datetime.date.today().isoformat(),
        "audio_seconds": round(seconds, 1),
        "segments": len(segments),
        "x_realtime": {k: round(seconds / v, 1) for k, v in t.items()},
        "facts_over_decode": round(t["facts"] / t["decode"], 3),
        "facts_over_decode_plus_features": round(t["facts"] / (t["decode"] + t["features"]), 3),
        "fingerprint_share_of_facts": round(t["fingerprint"] / t["facts"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
