"""Sharding: raw audio collections -> WebDataset shards + manifest in object storage (DESIGN §5).

``plan`` groups inputs into shards, ``worker`` builds one shard (no Ray), ``driver`` runs the
tasks on Ray and merges their summaries into the manifest, ``metrics`` reports progress; the
format itself (names, tar writer, index and manifest types) is ``musicoder.shardset``'s. :func:`run` imports the driver lazily so
that parsing a config (``launch/shard.py --help``) needs neither torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from musicoder.sharding.config import ShardJobConfig

if TYPE_CHECKING:
    from musicoder.sharding.driver import RunResult

__all__ = ["ShardJobConfig", "run"]


def run(cfg: ShardJobConfig, *, dry_run: bool = False, progress: bool = True) -> RunResult:
    """Run or resume a sharding job; see :func:`musicoder.sharding.driver.run`."""
    from musicoder.sharding.driver import run as run_job

    return run_job(cfg, dry_run=dry_run, progress=progress)
