"""Training reads from S3 under throttling and outages (DESIGN §9), through the fault proxy of
tests/fixtures_s3.py: ~20% of requests answered 503 SlowDown still deliver every batch and the
retries are counted in the batches; an endpoint gone for good ends the stream with one line
naming the endpoint (not a skipped shard)."""

from __future__ import annotations

import pytest
from fixtures_s3 import FaultProxy

from musicoder import storage
from musicoder.data.stream import DataConfig, ShardStream, error_line, make_loader
from musicoder.model import MaskingConfig
from musicoder.shardset.manifest import read_manifest

pytestmark = pytest.mark.integration
BATCH = 3
EPOCHS = 4


def _upload(local, base: str) -> str:
    for path in local.iterdir():
        storage.write_file(storage.join(base, f"set/{path.name}"), path)
    return storage.join(base, "set")


def _stream(root: str) -> ShardStream:
    cfg = DataConfig(manifest=root, num_workers=0, max_frames=32, shuffle_buffer=8)
    return ShardStream(
        read_manifest(root), cfg, MaskingConfig(), rank=0, world_size=1, batch_size=BATCH, seed=0
    )


@pytest.mark.timeout(120)
def test_throttled_reads_finish_and_count_retries(few_shard_set, s3_env, fault_proxy):
    root = _upload(few_shard_set, s3_env)
    stream = _stream(root)  # manifest read before the faults start
    proxy: FaultProxy = fault_proxy(p_503=0.2, seed=5, max_attempts=10)
    loader = make_loader(stream)
    for epoch in range(EPOCHS):  # each epoch reads both shards again
        stream.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == (14 + 9) // BATCH
        assert batches[-1][1].damaged == ()
    assert proxy.counts["503"] > 0, proxy.counts
    assert batches[-1][1].s3_retries >= proxy.counts["503"]


@pytest.mark.timeout(120)
def test_unavailable_endpoint_ends_the_stream_naming_it(few_shard_set, s3_env, fault_proxy):
    root = _upload(few_shard_set, s3_env)
    stream = _stream(root)
    proxy: FaultProxy = fault_proxy(max_attempts=2)
    proxy.stop()  # gone for good: connections refused
    with pytest.raises(storage.StorageUnavailableError) as err:
        list(make_loader(stream))
    line = error_line(err.value)
    assert f"S3 endpoint {proxy.url} unavailable" in line and root in line
    assert "\n" not in line
