#!/usr/bin/env bash
# `make gpu-bench`: the GPU benchmark on a bare CUDA machine (issue 6), within ~8 minutes.
#
#   bash bench/gpu_bench.sh                  # on the GPU machine, from the repository root
#   bash bench/gpu_bench.sh --device cpu --tiny   # CPU smoke test (arguments go to bench/gpu.py)
#
# The GPU machine has Python 3.12 and torch 2.11 but no DeepSpeed, webdataset or OmegaConf and no
# internet: carry wheels in wheels/ (WHEELS=dir to override). Prepare them on a machine with
# internet, e.g.:
#   pip wheel --no-deps -w wheels deepspeed==0.19.8 webdataset omegaconf     # DeepSpeed is an sdist
#   pip download -d wheels --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 hjson msgpack ninja py-cpuinfo pydantic einops \
#       braceexpand antlr4-python3-runtime boto3 safetensors
# Installs into a venv that sees the machine's torch (--system-site-packages), then prints one
# JSON line per measurement (bench/gpu.py). Not yet run on a GPU: no device was lent when written.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-wheels}
VENV=${GPU_VENV:-.gpu-venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
missing=$("$VENV/bin/python" - <<'PY'
import importlib.util
need = {"deepspeed": "deepspeed", "webdataset": "webdataset", "omegaconf": "omegaconf",
        "boto3": "boto3", "safetensors": "safetensors", "torchaudio": "torchaudio"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
    echo "installing from $WHEELS: $missing" >&2
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-index --find-links "$WHEELS" $missing
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec timeout "${GPU_BENCH_TIMEOUT:-480}" "$VENV/bin/python" bench/gpu.py "$@"
