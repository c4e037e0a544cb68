"""Sharding driver: plan, check the output, run one Ray task per missing shard, write the manifest.

Order of effects on the output (DESIGN §5, STYLE 9): ``plan.json`` first; then each task's tar
and index; then ``rejects.jsonl``; ``manifest.json`` last, only when every shard succeeded and
rejects stay within ``max_reject_fraction``. Re-running the same command resumes: shards with an
index are read back, not redone; a complete output is left untouched; a different plan is
refused unless ``overwrite``. Ray is touched only here: tasks use one CPU (and one torch/OMP
thread: more threads per task cost CPU for nothing, DESIGN §9), are retried ``max_retries``
times, and at most ``max_in_flight`` are submitted at once, so driver memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray
import torch

from musicoder import features, storage
from musicoder.cli import describe
from musicoder.sharding.config import ShardJobConfig
from musicoder.sharding.metrics import JobProgress, hours
from musicoder.sharding.plan import PLAN_NAME, PlannedShard, ShardPlan, build_plan, normalize_uri
from musicoder.sharding.worker import ShardTask, process_shard
from musicoder.shardset.format import INDEX_SUFFIX, MANIFEST_NAME, REJECTS_NAME, TAR_SUFFIX
from musicoder.shardset.index import ShardSummary
from musicoder.shardset.manifest import ManifestBuilder, reject_fraction, rejects_jsonl
from musicoder.storage import StorageUnavailableError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_TOO_MANY_REJECTS = 0, 1, 3
SHARD_FILE_RE = re.compile(r"^(?:shard|val)-\d{6,}\.(?:tar|json)$")
# Hidden temp siblings that storage's atomic writes leave behind when a task is killed.
STALE_TEMP_RE = re.compile(r"^\.(?:shard|val)-\d{6,}\.(?:tar|json)\..*\.tmp$")
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint
INDEX_READ_THREADS = 16


class ShardOutputError(ValueError):
    """The output holds something else than this plan's (partial) dataset."""


@dataclass
class RunResult:
    """How a run ended: status, exit code for the CLI, and a one-line summary."""

    status: str  # "complete" | "already_complete" | "dry_run" | "too_many_rejects" | "failed"
    exit_code: int
    summary: str
    counts: dict | None = None


def in_ray_job() -> bool:
    """True when running as the entrypoint of ``ray job submit`` (or with RAY_JOB_ID set)."""
    if os.environ.get("RAY_JOB_ID"):
        return True
    try:
        meta = json.loads(os.environ.get(RAY_JOB_CONFIG_ENV) or "{}").get("metadata") or {}
    except (ValueError, AttributeError):
        return False
    return "job_submission_id" in meta


def check_paths(cfg: ShardJobConfig) -> None:
    """Refuse missing paths, and relative local paths inside a Ray job (DESIGN §3).

    Raises:
        ValueError: naming the offending key and path.
    """
    if not cfg.output:
        raise ValueError("output: give --output (a local folder or an s3:// prefix)")
    if not cfg.inputs:
        raise ValueError("inputs: give at least one --input (folder, s3:// prefix or list file)")
    if not in_ray_job():
        return
    for key, uri in [("output", cfg.output)] + [("inputs", u) for u in cfg.inputs]:
        if storage.is_local(uri) and not os.path.isabs(
            os.path.expanduser(str(storage.local_path(uri)))
        ):
            raise ValueError(
                f"{key}: relative local path {uri!r} inside a Ray job would resolve in the job's "
                "temporary working dir; use an absolute path on a shared filesystem or s3://"
            )


def run(cfg: ShardJobConfig, *, dry_run: bool = False, progress: bool = True) -> RunResult:
    """Run (or resume) a sharding job.

    Args:
        cfg: the job config.
        dry_run: only list and plan; write nothing.
        progress: show a progress bar on stderr.

    Returns:
        The result; ``exit_code`` is non-zero when shards failed or rejects exceed the limit.

    Raises:
        ValueError: bad inputs/output, or the output holds a different plan (ShardOutputError).
        FileNotFoundError: an input does not exist.
    """
    started = time.perf_counter()
    check_paths(cfg)
    output = normalize_uri(cfg.output)
    previous = _previous_plan(output)
    plan = build_plan(cfg, reuse=previous.get("grouping"))
    if previous and plan.fingerprint != previous.get("fingerprint") and (cfg.overwrite or dry_run):
        # Inputs or config changed and the plan will be used: measure the rates afresh (without
        # --overwrite the output is refused below, so the inputs are not listed twice).
        plan = build_plan(cfg)
    if dry_run:
        return RunResult("dry_run", EXIT_OK, describe_plan(plan, output))
    names = _names_in(output)
    if _prepare_output(cfg, output, plan, names, previous):
        counts = storage.read_json(storage.join(output, MANIFEST_NAME)).get("counts")
        line = f"{output} is already complete ({_counts_line(counts)}); nothing to do"
        log.info(line)
        return RunResult("already_complete", EXIT_OK, line, counts)
    builder = ManifestBuilder(len(plan.shards), features.num_channels(cfg.preset))
    done = _read_done(output, plan, names)
    for index, summary in done.items():
        builder.add(index, summary)
    todo = [s for s in plan.shards if s.index not in done]
    if done:
        log.info("resuming %s: %d of %d shards already done", output, len(done), len(plan.shards))
    outcome = _run_tasks(cfg, plan, output, todo, builder, done, progress) if todo else None
    failed = outcome.failed if outcome else []
    if outcome and outcome.unavailable:
        line = (
            f"{outcome.unavailable}; stopped with {outcome.done} of "
            f"{len(plan.shards)} shards done; re-run the same command when it is back"
        )
        log.error(line)
        return RunResult("storage_unavailable", EXIT_FAILED, line)
    if failed:
        line = (
            f"{len(failed)} of {len(plan.shards)} shards failed ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); re-run the same command to retry them"
        )
        log.error(line)
        return RunResult("failed", EXIT_FAILED, line)
    return _finish(cfg, output, plan, builder, time.perf_counter() - started)


def describe_plan(plan: ShardPlan, output: str) -> str:
    """One line describing a plan (the ``--dry-run`` output)."""
    counts = plan.to_json()["counts"]
    return (
        f"plan: {counts['files']} files ({counts['duplicates']} duplicates dropped, "
        f"{counts['plan_rejects']} unreadable), ~{hours(plan.est_seconds)} audio (estimated) -> "
        f"{counts['train_shards']} train + {counts['val_shards']} val shards "
        f"(target {plan.config['shard_size_mb']:g} MB) in {output}; "
        f"fingerprint {plan.fingerprint[:12]}"
    )


def _previous_plan(output: str) -> dict:
    """The ``plan.json`` already in ``output``, or {} when there is none (or it is unreadable)."""
    uri = storage.join(output, PLAN_NAME)
    try:
        old = storage.read_json(uri) if storage.exists(uri) else {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); planning afresh", uri, exc)
        return {}
    return old if isinstance(old, dict) else {}


def _names_in(output: str) -> set[str]:
    try:
        return {
            storage.basename(info.uri) for info in storage.list_objects(output, recursive=False)
        }
    except FileNotFoundError:
        return set()


def _prepare_output(
    cfg: ShardJobConfig, output: str, plan: ShardPlan, names: set[str], previous: dict
) -> bool:
    """Check the output against the plan and write ``plan.json``; True = already complete.
    ``previous`` is the ``plan.json`` already there, as `_previous_plan` read it."""
    visible = {n for n in names if not n.startswith(".")}
    if PLAN_NAME in visible:
        old_fp = previous.get("fingerprint", "")
        if old_fp == plan.fingerprint:
            for stale in sorted(n for n in names if STALE_TEMP_RE.match(n)):
                storage.delete(storage.join(output, stale))
            return MANIFEST_NAME in visible
        problem = (
            f"holds a different plan (fingerprint {old_fp[:12]} != {plan.fingerprint[:12]}: "
            "inputs, config or code changed)"
        )
    else:
        problem = "is not empty and has no plan.json"
    if visible:
        if not cfg.overwrite:
            raise ShardOutputError(
                f"output {output} {problem}; pass --overwrite to replace it, "
                "or choose another --output"
            )
        log.warning("output %s %s: overwriting", output, problem)
        ours = sorted(n for n in names if SHARD_FILE_RE.match(n) or STALE_TEMP_RE.match(n))
        for name in [MANIFEST_NAME, *ours, REJECTS_NAME, PLAN_NAME]:
            if name in names:
                storage.delete(storage.join(output, name))
    storage.write_json(storage.join(output, PLAN_NAME), plan.to_json())
    return False


def _read_done(output: str, plan: ShardPlan, names: set[str]) -> dict[int, ShardSummary]:
    """Summaries of the shards whose tar and index both exist (index written last)."""
    done = [
        s for s in plan.shards if s.name + INDEX_SUFFIX in names and s.name + TAR_SUFFIX in names
    ]

    def read(shard: PlannedShard) -> ShardSummary:
        summary = ShardSummary.from_index(
            storage.read_json(storage.join(output, shard.name + INDEX_SUFFIX))
        )
        if summary.name != shard.name + TAR_SUFFIX or summary.split != shard.split:
            raise ShardOutputError(
                f"{output}/{shard.name}{INDEX_SUFFIX}: index does not match the plan"
            )
        return summary

    with ThreadPoolExecutor(INDEX_READ_THREADS) as pool:
        return {s.index: summary for s, summary in zip(done, pool.map(read, done), strict=True)}


def _tasks(
    cfg: ShardJobConfig, plan: ShardPlan, output: str, todo: list[PlannedShard]
) -> Iterator[ShardTask]:
    for shard in todo:  # built lazily: only the in-flight window holds URI lists
        yield ShardTask(
            index=shard.index,
            name=shard.name,
            split=shard.split,
            output=output,
            uris=tuple(plan.uris(shard)),
            preset=cfg.preset,
            segment_seconds=cfg.segment_seconds,
            min_seconds=cfg.min_seconds,
            keep_audio=cfg.keep_audio,
            batch_segments=cfg.batch_segments,
        )


def _process_one_thread(task: ShardTask) -> ShardSummary:
    torch.set_num_threads(1)
    return process_shard(task)


def _connect_ray(cfg: ShardJobConfig) -> bool:
    """Connect to the cluster (RAY_ADDRESS or a Ray job) or start a local Ray; True if started."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS") or in_ray_job():
        ray.init()
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus)
    return True


def _run_tasks(
    cfg: ShardJobConfig,
    plan: ShardPlan,
    output: str,
    todo: list[PlannedShard],
    builder: ManifestBuilder,
    done: dict[int, ShardSummary],
    progress: bool,
) -> TaskOutcome:
    """Run the missing shards on Ray with a bounded window.

    A shard that fails with `StorageUnavailableError` (the S3 endpoint unreachable or refusing
    through every retry of every attempt) stops the job: nothing more is submitted and the
    tasks in flight are cancelled, so an outage ends the job within the retries of one task
    instead of one such wait per remaining shard."""
    started_ray = _connect_ray(cfg)
    try:
        remote = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=True)(
            _process_one_thread
        )
        window = cfg.max_in_flight or max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
        bar = JobProgress(
            output=output,
            total_files=len(plan.order),
            total_shards=len(plan.shards),
            done_files=sum(s.accepted + s.rejected for s in done.values()),
            done_shards=len(done),
            enabled=progress,
        )
        tasks, in_flight, outcome = _tasks(cfg, plan, output, todo), {}, TaskOutcome()
        try:
            while True:
                while (
                    not outcome.unavailable
                    and len(in_flight) < window
                    and (task := next(tasks, None)) is not None
                ):
                    in_flight[remote.remote(task)] = task
                bar.in_flight(len(in_flight))
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    task = in_flight.pop(ref)
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        outcome.failed.append(task.name)
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, StorageUnavailableError) and not outcome.unavailable:
                            outcome.unavailable = describe(cause)
                            for pending in in_flight:
                                ray.cancel(pending, force=True)
                        log.error(
                            "%s failed after %d retries: %s",
                            task.name,
                            cfg.max_retries,
                            " ".join(str(err).split())[:500],
                        )
                        continue
                    builder.add(task.index, summary)
                    bar.shard_done(summary)
        finally:
            bar.close()
        outcome.done, outcome.s3_retries = bar.done_shards, bar.s3_retries
        if bar.s3_retries:
            log.info("S3 retries in shard tasks: %d", bar.s3_retries)
        return outcome
    finally:
        if started_ray:
            ray.shutdown()


@dataclass
class TaskOutcome:
    """What `_run_tasks` ended with."""

    failed: list[str] = dataclasses.field(default_factory=list)  # shard names
    unavailable: str = ""  # one line naming the endpoint, when storage became unavailable
    done: int = 0  # shards done, resumed ones included
    s3_retries: int = 0


def _finish(
    cfg: ShardJobConfig, output: str, plan: ShardPlan, builder: ManifestBuilder, elapsed: float
) -> RunResult:
    """rejects.jsonl, then (rejects permitting) manifest.json, and the summary line."""
    storage.write_text(
        storage.join(output, REJECTS_NAME), rejects_jsonl(plan.rejects + builder.rejects)
    )
    counts = builder.counts(len(plan.rejects))
    assert counts["inputs"] == plan.num_inputs, (counts, plan.num_inputs)
    if reject_fraction(counts) > cfg.max_reject_fraction:
        line = (
            f"too many rejects: {counts['rejected']} of {counts['inputs']} inputs "
            f"({reject_fraction(counts):.0%} > max_reject_fraction {cfg.max_reject_fraction:.0%}); "
            f"see {storage.join(output, REJECTS_NAME)}; no manifest written"
        )
        log.error(line)
        return RunResult("too_many_rejects", EXIT_TOO_MANY_REJECTS, line, counts)
    feature = dataclasses.asdict(features.preset_config(cfg.preset))
    manifest = builder.manifest(
        plan_rejects=len(plan.rejects),
        preset=cfg.preset,
        feature=feature,
        channels=features.num_channels(cfg.preset),
        fingerprint=plan.fingerprint,
        config=plan.config,
    )
    storage.write_json(storage.join(output, MANIFEST_NAME), manifest)
    line = (
        f"sharded {_counts_line(counts)} -> {len(manifest['train'])} train + "
        f"{len(manifest['val'])} "
        f"val shards, {builder.totals['bytes'] / 1e6:.1f} MB in {elapsed:.0f} s: "
        f"{storage.join(output, MANIFEST_NAME)}"
    )
    log.info(line)
    return RunResult("complete", EXIT_OK, line, counts)


def _counts_line(counts: dict | None) -> str:
    if not counts:
        return "no counts"
    return (
        f"{counts['inputs']} inputs: {counts['accepted']} accepted "
        f"({counts['truncated']} truncated), {counts['rejected']} rejected; "
        f"{counts['segments']} segments, {hours(counts['hours'] * 3600)} audio"
    )
