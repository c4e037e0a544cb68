"""Shared pytest set-up.

Expensive fixtures (the S3 API server, a Ray cluster, shard sets, DeepSpeed runs) live in
`tests/fixtures_*.py` plugin modules, one per area, and are session-scoped so several tests
reuse one set-up (DESIGN §10).
"""

import os

# One BLAS/OMP thread per process: the machines have 2 cores and tests run subprocesses too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytest_plugins = [
    "fixtures_audio",
    "fixtures_s3",
    "fixtures_training",
    "fixtures_sharding",
    "fixtures_downstream",
]
