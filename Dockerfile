# MusiCoder runtime image: every launch/ script runs in it (sharding on CPU nodes, DeepSpeed
# pre-training on CUDA nodes).
#   docker build -t musicoder:0.1.0 .
#   docker run --rm --gpus all -v $PWD/shards:/app/shards musicoder:0.1.0 \
#       deepspeed --num_gpus 1 launch/pretrain.py --config configs/pretrain/base.yaml \
#       --deepspeed configs/deepspeed/zero2.json --set data.manifest=s3://corpus/musicoder324/v1
# Pinned by exact tag; pin the digest too (`docker buildx imagetools inspect`) when you mirror it.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ARG PYTHON=python3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1 \
    RAY_USAGE_STATS_ENABLED=0

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      ${PYTHON} ${PYTHON}-venv ${PYTHON}-dev libsndfile1 libchromaprint1 ffmpeg git build-essential openssh-client pdsh procps \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 musicoder
WORKDIR /app
RUN ${PYTHON} -m venv /opt/venv && chown -R musicoder /opt/venv /app
ENV PATH=/opt/venv/bin:$PATH

USER musicoder
# Dependencies first (cached layer), pinned by pyproject.toml's exact torch/torchaudio pins.
COPY --chown=musicoder pyproject.toml README.md ./
COPY --chown=musicoder musicoder/__init__.py musicoder/__init__.py
RUN pip install --upgrade pip==24.3.1 && pip install -e .
COPY --chown=musicoder . .
RUN pip install --no-deps -e .

CMD ["python", "launch/shard.py", "--help"]
