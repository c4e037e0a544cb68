"""Driver-side observability for the sharding job: a tqdm progress bar and Ray metrics.

Metrics are recorded in the driver from the summaries that tasks return (the worker stays free of
Ray), through ``ray.util.metrics``, which Ray exports to Prometheus and its dashboard with the
``ray_`` prefix (e.g. ``ray_musicoder_shard_files``). All carry an ``output`` tag so concurrent
jobs can be told apart. Numbers go to metrics and the bar; logs get one summary line at the end.
"""

from __future__ import annotations

import logging

from ray.util import metrics
from tqdm import tqdm

from musicoder.shardset.index import ShardSummary

log = logging.getLogger(__name__)

METRIC_PREFIX = "musicoder_shard_"
TAG_KEYS = ("output",)


class JobProgress:
    """Progress bar (files, audio hours, shards, rejects, ETA) plus Ray counters and gauges."""

    def __init__(
        self,
        *,
        output: str,
        total_files: int,
        done_files: int,
        total_shards: int,
        done_shards: int,
        enabled: bool = True,
    ) -> None:
        self.total_shards, self.done_shards = total_shards, done_shards
        self.seconds = 0.0
        self.rejects = 0
        self.s3_retries = 0
        self._bar = tqdm(
            total=total_files,
            initial=done_files,
            unit="file",
            desc="sharding",
            disable=not enabled,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        tags = {"output": output}

        def counter(name: str, doc: str) -> metrics.Counter:
            m = metrics.Counter(METRIC_PREFIX + name, description=doc, tag_keys=TAG_KEYS)
            m.set_default_tags(tags)
            return m

        def gauge(name: str, doc: str) -> metrics.Gauge:
            m = metrics.Gauge(METRIC_PREFIX + name, description=doc, tag_keys=TAG_KEYS)
            m.set_default_tags(tags)
            return m

        self._files = counter("files", "source files processed")
        self._rejects = counter("rejects", "source files rejected")
        self._audio = counter("audio_seconds", "seconds of audio written as samples")
        self._bytes = counter("bytes_written", "bytes of shard tars written")
        self._task_seconds = counter("task_seconds", "wall seconds spent in shard tasks")
        self._s3_retries = counter(
            "s3_retries", "S3 requests retried (503 SlowDown, resets) and bodies re-opened"
        )
        self._shards = gauge("shards_done", "shards finished (resumed ones included)")
        self._in_flight = gauge("shards_in_flight", "shard tasks submitted and not finished")
        self._shards.set(done_shards)
        self._postfix()

    def shard_done(self, s: ShardSummary) -> None:
        """Account for one shard finished by a task."""
        files = s.accepted + s.rejected
        self.done_shards += 1
        self.seconds += s.seconds
        self.rejects += s.rejected
        self.s3_retries += s.s3_retries
        for metric, value in (
            (self._files, files),
            (self._rejects, s.rejected),
            (self._audio, s.seconds),
            (self._bytes, s.bytes),
            (self._task_seconds, s.task_seconds),
            (self._s3_retries, s.s3_retries),
        ):
            if value > 0:  # Ray counters refuse increments <= 0
                metric.inc(value)
        self._shards.set(self.done_shards)
        self._bar.update(files)
        self._postfix()

    def in_flight(self, n: int) -> None:
        """Report how many tasks are running or queued."""
        self._in_flight.set(n)

    def _postfix(self) -> None:
        self._bar.set_postfix_str(
            f"audio {hours(self.seconds)}, shards {self.done_shards}/{self.total_shards}, "
            f"rejects {self.rejects}",
            refresh=False,
        )

    def close(self) -> None:
        """Close the bar and zero the in-flight gauge."""
        self._in_flight.set(0)
        self._bar.close()


def hours(seconds: float) -> str:
    """Human duration: '1.25 h' or '12.5 min'."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
