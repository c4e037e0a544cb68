"""DeepSpeed pre-training of MusiCoder on WebDataset shards (DESIGN §7).

One training path for 1..N ranks (STYLE 12): `Pretrainer` is a lifecycle object
(setup -> train -> save -> close) and `run` drives it. The pretrain YAML (`PretrainConfig`) owns
the optimisation knobs and the DeepSpeed JSON owns distribution (see `training/dsconfig.py`).

Stopping is collective: SIGTERM/SIGINT only set a flag, the ranks all-reduce it after every
step (together with the step's metrics, so it costs no extra collective), and all of them save
one checkpoint at the same step and return normally. Dropout is reseeded from (seed, step,
micro step, rank) so a resumed run replays the same randomness as an uninterrupted one.

A dead or hung rank ends the others: every process group waits at most
`train.collective_timeout_s` in a collective, then raises, and the rank exits non-zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch

from musicoder.data.mixture import expected_shares, read_data, source_names
from musicoder.data.plan import derive_seed
from musicoder.data.stream import DamagedShardsError, ShardStream, make_loader
from musicoder.model import (
    Batch,
    flops_per_frame,
    model_input,
    pretraining_loss,
    reconstruction_loss,
    split_halves,
)
from musicoder.model.baselines import BASELINES, baseline_losses
from musicoder.model.contrastive import contrastive_loss, pair_accuracy
from musicoder.model.loss import LossOutput, teacher_term
from musicoder.model.teacher import ema_update, make_teacher, teacher_targets
from musicoder.shardset.manifest import Manifest, check_preset
from musicoder.training import checkpoint
from musicoder.training.dsconfig import build_deepspeed_config, read_deepspeed_json, zero_stage
from musicoder.training.config import PretrainConfig
from musicoder.training.tb import TrainLogger

__all__ = ["Pretrainer", "check_inputs", "data_change", "default_single_process_env", "run"]

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RESOLVED_CONFIG = "config.yaml"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
UNIVERSAL_TIMEOUT_S = 4 * 3600  # ranks wait this long for rank 0's universal conversion
SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"  # its shm.cpp


def log_rank_zero(msg: str, *args: Any) -> None:
    """Log at INFO on global rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        log.info(msg, *args)


@dataclass
class StepMetrics:
    """One optimizer step's loss sums over its micro batches, kept on the device (adding them
    never waits for the device), and the valid frames the loader reported (host counts)."""

    loss: torch.Tensor  # () float32: total reconstruction loss, summed over micro batches
    cfm: torch.Tensor  # () CFM part
    ccm: torch.Tensor  # () CCM part
    contrastive: torch.Tensor  # () contrastive term (0 when off)
    teacher: torch.Tensor  # () teacher term (0 when off)
    frames: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> StepMetrics:
        """Empty sums on `device`."""
        return cls(*(torch.zeros((), device=device) for _ in range(5)))

    def add(self, loss: LossOutput, frames: int) -> None:
        """Add one micro batch's losses (detached) and valid frames."""
        self.loss += loss.total.detach()
        self.cfm += loss.cfm.detach()
        self.ccm += loss.ccm.detach()
        if loss.contrastive is not None:
            self.contrastive += loss.contrastive.detach()
        if loss.teacher is not None:
            self.teacher += loss.teacher.detach()
        self.frames += frames

    def losses(self) -> torch.Tensor:
        """`(5,)` float64 on the device: total, CFM, CCM, contrastive, teacher."""
        return torch.stack([self.loss, self.cfm, self.ccm, self.contrastive, self.teacher]).double()


def check_inputs(
    config: PretrainConfig, deepspeed_config: str, resume: Literal["auto"] | None = None
) -> Manifest:
    """Check what a run is given before any process group exists, so that every rank fails
    alike with a one-line error: the manifest or the mixture of `data.sources` (complete,
    readable, one feature preset, the model's), the DeepSpeed JSON (readable, no key the YAML
    owns) and, with `resume="auto"`, that a checkpoint dir with a `latest` still has a complete
    tag.

    Returns:
        The manifest (of the mixture, with `data.sources`).

    Raises:
        FileNotFoundError: no manifest or DeepSpeed JSON.
        ValueError: an unreadable or mismatched manifest, a bad DeepSpeed JSON, fp16 on CPU,
            or only torn checkpoints to resume from.
    """
    tcfg = config.train
    if tcfg.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
    manifest = read_data(config.data)
    check_preset(manifest, config.data.preset, config.model_config().input_dim)
    deepspeed_dict(config, deepspeed_config, on_cpu=not torch.cuda.is_available())
    if resume == "auto":
        checkpoint.complete_tag(os.path.join(tcfg.output_dir, checkpoint.CHECKPOINTS_DIR))
    return manifest


def deepspeed_dict(
    config: PretrainConfig, deepspeed_config: str, *, on_cpu: bool, load_universal: bool = False
) -> dict:
    """The DeepSpeed JSON at `deepspeed_config` with the knobs the pretrain YAML owns injected."""
    tcfg = config.train
    return build_deepspeed_config(
        read_deepspeed_json(deepspeed_config),
        source=deepspeed_config,
        lr=tcfg.lr,
        warmup_steps=tcfg.warmup_steps,
        max_steps=tcfg.max_steps,
        micro_batch=tcfg.micro_batch,
        grad_accum=tcfg.grad_accum,
        precision=tcfg.precision,
        load_universal=load_universal,
        on_cpu=on_cpu,
    )


class Pretrainer:
    """Pre-training lifecycle: `setup()`, `train()`, `save()`, `close()`."""

    def __init__(
        self,
        config: PretrainConfig,
        *,
        deepspeed_config: str,
        resume: Literal["auto"] | None = None,
    ) -> None:
        self.config, self.ds_path, self.resume = config, deepspeed_config, resume
        self.model_config = config.model_config()
        self.ckpt_dir = os.path.join(config.train.output_dir, checkpoint.CHECKPOINTS_DIR)
        self.state = checkpoint.ClientState()
        self.stop_requested = False
        self.engine = None
        self.teacher = None  # the EMA teacher of `loss.teacher_weight` (fp32, beside the engine)
        self.tb: TrainLogger | None = None
        self._batches = None
        self._skipped: dict[int, int] = {}  # bad samples skipped this epoch, per loader worker
        self._s3_retries: dict[int, int] = {}  # S3 retries so far, per loader worker
        self._drawn: list[int] = []  # samples taken per data source since the last log step
        self._damaged: set[int] = set()  # train shards this rank's workers found bad
        self._damaged_synced = 0  # how many of them the other ranks know of
        self._job_damaged: set[int] = set()  # the union over ranks
        self._old_handlers: dict = {}

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Start the process group, read data, build the engine, resume if asked."""
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        import torch.distributed as dist

        cfg, tcfg = self.config, self.config.train
        manifest = check_inputs(cfg, self.ds_path, self.resume)  # fails before any collective
        timeout = timedelta(seconds=tcfg.collective_timeout_s)
        _default_group_timeout(timeout)
        deepspeed.init_distributed(
            dist_backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout
        )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if get_accelerator().device_name() == "cpu":
            unlink_allreduce_buffer(self.rank, self.world)
        tag, universal = self._find_resume()
        ds_cfg = deepspeed_dict(
            self.config,
            self.ds_path,
            on_cpu=get_accelerator().device_name() == "cpu",
            load_universal=universal,
        )
        # Identical initial weights on every rank and for every ZeRO stage (no zero.Init: it
        # draws partitions in another order; xl still fits host memory when built whole).
        torch.manual_seed(tcfg.seed)
        model = cfg.build_model()
        teacher = make_teacher(model.encoder) if cfg.loss.teacher_weight else None
        if tcfg.freeze_input_projection:
            model.encoder.input_proj.requires_grad_(False)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_cfg,
        )
        self.device, self.dtype = self.engine.device, DTYPES[tcfg.precision]
        self.teacher = None if teacher is None else teacher.to(self.device)
        self.stream = ShardStream(
            manifest,
            cfg.data,
            cfg.masking,
            rank=self.rank,
            world_size=self.world,
            batch_size=tcfg.micro_batch,
            seed=tcfg.seed,
        )
        self.sources = source_names(cfg.data, manifest)
        self._drawn = [0] * len(self.sources)
        if tag is not None:
            self._load(tag)
        self.val_stream = self._make_val_stream(manifest)
        self.state.world_size, self.state.preset = self.world, manifest.preset
        self.state.config = _config_dict(cfg)
        self.state.feature = manifest.feature
        self.state.stats = manifest.stats.to_dict()
        if self.rank == 0:
            from musicoder.config import save_config

            save_config(cfg, os.path.join(tcfg.output_dir, RESOLVED_CONFIG))
        self.tb = TrainLogger(tcfg.output_dir, enabled=self.rank == 0)
        for sig in STOP_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._request_stop)
        log_rank_zero(
            "training %s (%d params) on %d rank(s), ZeRO-%d, %d batches/epoch/rank",
            cfg.variant,
            sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
            self.world,
            zero_stage(ds_cfg),
            self.stream.batches_per_epoch,
        )
        if len(self.sources) > 1:
            log_rank_zero(
                "data sources (expected share of samples): %s",
                ", ".join(
                    f"{name} {share:.1%}"
                    for name, share in zip(self.sources, expected_shares(manifest), strict=True)
                ),
            )

    def _find_resume(self) -> tuple[str | None, bool]:
        """The tag to resume from and whether it needs universal loading (converted here)."""
        import torch.distributed as dist

        if self.resume != "auto":
            return None, False
        tag, torn = checkpoint.complete_tag(self.ckpt_dir)
        for skipped, reason in torn if self.rank == 0 else []:
            log.warning(
                "--resume auto: checkpoint %s is torn (%s); trying the one before",
                os.path.join(self.ckpt_dir, skipped),
                reason,
            )
        if tag is None:
            log_rank_zero("--resume auto: no checkpoint in %s, starting fresh", self.ckpt_dir)
            return None, False
        saved = checkpoint.read_state(self.ckpt_dir, tag)
        if saved.world_size == self.world:
            return tag, False
        log_rank_zero(
            "resuming %s written by %d ranks on %d: universal checkpoint",
            tag,
            saved.world_size,
            self.world,
        )
        # Converting can take longer than the collective timeout: the others wait on a group
        # of their own with a timeout that fits the conversion.
        slow = dist.new_group(backend="gloo", timeout=timedelta(seconds=UNIVERSAL_TIMEOUT_S))
        if self.rank == 0:
            checkpoint.to_universal(self.ckpt_dir, tag)
        dist.barrier(group=slow)
        dist.destroy_process_group(slow)
        return tag + checkpoint.UNIVERSAL_SUFFIX, True

    def _load(self, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(self.ckpt_dir, tag=tag)
        if path is None:
            raise FileNotFoundError(f"{os.path.join(self.ckpt_dir, tag)}: cannot load checkpoint")
        self.state = checkpoint.read_state(self.ckpt_dir, tag)
        if self.teacher is not None and not checkpoint.load_teacher(
            self.ckpt_dir, tag, self.teacher
        ):
            log_rank_zero("checkpoint %s has no teacher: it starts from the resumed encoder", tag)
            self._update_teacher(decay=0.0)
        self.stream.set_position(self.state.position)
        log_rank_zero(
            "resumed from %s at step %d (epoch %d)",
            path,
            self.state.step,
            self.state.position.epoch,
        )
        changed = data_change(self.state.config, self.config)
        if changed and self.rank == 0:
            log.warning("%s", changed)

    def _make_val_stream(self, manifest) -> ShardStream | None:
        if not manifest.val or self.config.train.val_every == 0:
            return None
        data = dataclasses.replace(self.config.data, num_workers=0)
        try:
            return ShardStream(
                manifest,
                data,
                self.config.masking,
                rank=self.rank,
                world_size=self.world,
                batch_size=self.config.train.micro_batch,
                seed=self.config.train.seed,
                split="val",
                shuffle=False,
            )
        except ValueError as exc:
            log_rank_zero("validation disabled: %s", exc)
            return None

    def _request_stop(self, signum: int, _frame) -> None:
        self.stop_requested = True
        log.warning(
            "rank %d: %s received, stopping after this step", self.rank, signal.Signals(signum).name
        )

    # ---------------------------------------------------------------- train
    def _epochs(self):
        """(Batch, BatchInfo) pairs across epochs, keeping the data position current."""
        position = self.state.position
        position.consumed = list(self.stream.skip)
        loader = make_loader(self.stream)  # built once: its workers persist across epochs
        while True:
            for item in loader:
                position.consumed[item[1].worker] = item[1].consumed
                self._skipped[item[1].worker] = item[1].skipped_samples
                self._damaged.update(item[1].damaged)
                self._s3_retries[item[1].worker] = item[1].s3_retries
                for k, n in enumerate(item[1].sources):
                    self._drawn[k] += n
                yield item
            position.epoch += 1
            position.consumed = [0] * self.stream.num_workers
            self.stream.set_epoch(position.epoch)

    def train(self) -> checkpoint.ClientState:
        """Run until `train.max_steps` or a stop signal; returns the final client state."""
        tcfg, engine = self.config.train, self.engine
        self._batches = self._epochs()
        pos = self.state.position
        pos.world_size, pos.num_workers = self.world, self.stream.num_workers
        pos.batch_size = tcfg.micro_batch
        engine.train()
        while self.state.step < tcfg.max_steps:
            start = time.perf_counter()
            metrics = StepMetrics.zeros(self.device)
            for micro in range(tcfg.grad_accum):
                batch, info = next(self._batches)
                target = batch.to(self.device)
                torch.manual_seed(derive_seed(tcfg.seed, self.state.step, micro, self.rank))
                target = self._model_batch(target)
                inputs = target.masked_input
                out = engine(inputs, target.valid)
                loss = pretraining_loss(out, target, self.config.loss, self._targets(target))
                engine.backward(loss.total)
                engine.step()
                metrics.add(loss, info.frames)  # stays on the device: no host sync here
            if self.teacher is not None and self.config.loss.teacher_decay < 1.0:
                self._update_teacher(self.config.loss.teacher_decay)  # once per optimizer step
            # One collective per step, as stopping must be agreed on every step anyway.
            frames, new_damaged, skipped, s3_retries, stop = self._all_sum(
                [
                    metrics.frames,
                    len(self._damaged) - self._damaged_synced,
                    sum(self._skipped.values()),
                    sum(self._s3_retries.values()),
                    float(self.stop_requested),
                ]
            )
            if new_damaged > 0:  # rare: every rank takes part, as every rank saw the sum
                self._check_damaged()
            elapsed = time.perf_counter() - start
            self.state.step += 1
            global_batch = tcfg.micro_batch * tcfg.grad_accum * self.world
            self.state.samples_seen += global_batch
            self.state.frames_seen += int(frames)
            step = self.state.step
            if step % tcfg.log_every == 0 or step == 1:  # the same steps on every rank
                losses = self._all_sum(metrics.losses())  # read from the device only here
                self._log_step(
                    step,
                    losses=losses,
                    frames=frames,
                    skipped=skipped,
                    s3_retries=s3_retries,
                    elapsed=elapsed,
                    global_batch=global_batch,
                    seq_len=target.features.shape[1],
                )
            if tcfg.image_every and step % tcfg.image_every == 0:
                self.tb.reconstruction(
                    step,
                    target.features[0],
                    inputs[0],
                    out.reconstruction[0].detach(),
                    target.valid[0],
                )
            if tcfg.val_every and step % tcfg.val_every == 0:
                self.validate()
            if stop > 0 or step % tcfg.save_every == 0 or step == tcfg.max_steps:
                self.save()
            if stop > 0:
                log.warning("rank %d stopped by signal at step %d", self.rank, step)
                break
        return self.state

    def _model_batch(self, batch: Batch) -> Batch:
        """What the model sees of a loaded batch: its masks applied on the device
        (`masked_input` set), cut into crop halves when the contrastive term is on."""
        inputs = model_input(batch, self.dtype)
        if self.config.loss.contrastive_weight:
            return split_halves(batch, inputs)
        return dataclasses.replace(batch, masked_input=inputs)

    def _update_teacher(self, decay: float) -> None:
        """EMA step of the teacher towards the encoder; under ZeRO-3 the encoder's partitioned
        parameters are gathered for it (one all-gather, as for a forward pass). DeepSpeed's
        context is a no-op for parameters ZeRO does not partition (stages 0-2)."""
        import deepspeed

        encoder = self.engine.module.encoder
        with deepspeed.zero.GatheredParameters(list(encoder.parameters()), modifier_rank=None):
            ema_update(self.teacher, encoder, decay)

    def _targets(self, batch: Batch) -> torch.Tensor | None:
        """The teacher's targets for a model batch; None when the teacher term is off."""
        if self.teacher is None:
            return None
        return teacher_targets(
            self.teacher, batch.features, batch.valid, self.config.loss.teacher_layers
        )

    def _check_damaged(self) -> None:
        """Merge the damaged shards of all ranks (one MAX all-reduce over a flag per shard) and
        stop the job when there are more than `data.max_damaged_shards`.

        Raises:
            DamagedShardsError: on every rank alike, naming the first damaged shards.
        """
        import torch.distributed as dist

        shards = self.stream.shards
        flags = torch.zeros(len(shards), dtype=torch.float32)
        flags[sorted(self._damaged)] = 1.0
        flags = flags.to(self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._job_damaged = set(flags.nonzero().flatten().tolist())
        self._damaged_synced = len(self._damaged)
        limit, found = self.config.data.max_damaged_shards, len(self._job_damaged)
        names = ", ".join(shards[i].uri for i in sorted(self._job_damaged)[:3])
        log_rank_zero(
            "%d of %d train shards damaged or unreadable so far (data.max_damaged_shards=%d)",
            found,
            len(shards),
            limit,
        )
        if found > limit:
            raise DamagedShardsError(
                f"{self.stream.manifest.uri}: {found} of {len(shards)} train shards are damaged "
                f"or unreadable, more than data.max_damaged_shards={limit} ({names}"
                f"{', ...' if found > 3 else ''}); see the warnings, re-shard or raise the limit"
            )

    def _all_sum(self, values: list[float] | torch.Tensor) -> list[float]:
        """Sum over ranks (float64, on the device for NCCL), read back to the host."""
        import torch.distributed as dist

        tensor = torch.as_tensor(values, dtype=torch.float64).to(self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def _log_step(
        self,
        step: int,
        *,
        losses: list[float],
        frames: float,
        skipped: float,
        s3_retries: float,
        elapsed: float,
        global_batch: int,
        seq_len: int,
    ) -> None:
        n = self.world * self.config.train.grad_accum
        frames_per_s = frames / elapsed
        tflops = flops_per_frame(self.model_config, seq_len) * frames_per_s / 1e12 / self.world
        norm = self.engine.get_global_grad_norm()
        total, cfm, ccm, contrastive, teacher = (value / n for value in losses)
        values = {
            "loss/total": total,
            "loss/cfm": cfm,
            "loss/ccm": ccm,
            "opt/lr": self.engine.get_lr()[0],
            "perf/samples_per_s": global_batch / elapsed,
            "perf/frames_per_s": frames_per_s,
            "perf/tflops_per_device": tflops,
            "perf/mfu": tflops / self.config.train.peak_tflops,
            "perf/memory_gib": _memory_gib(),
            "data/skipped_shards": float(len(self._job_damaged)),
            "data/skipped_samples": skipped,
            "data/s3_retries": s3_retries,
            "data/epoch": float(self.state.position.epoch),
        }
        if self.config.loss.contrastive_weight:
            values["loss/contrastive"] = contrastive
        if self.teacher is not None:
            values["loss/teacher"] = teacher
        if len(self.sources) > 1:  # share of each source in the samples since the last log
            drawn = self._all_sum(self._drawn)
            self._drawn = [0] * len(self.sources)
            for name, n in zip(self.sources, drawn, strict=True):
                values[f"data/source/{name}"] = n / max(sum(drawn), 1.0)
        if norm is not None:
            values["opt/grad_norm"] = float(norm)
        self.tb.scalars(step, values)
        log_rank_zero(
            "step %d loss %.4f lr %.3g %.0f frames/s",
            step,
            values["loss/total"],
            values["opt/lr"],
            frames_per_s,
        )

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean validation loss over the val shards (same batch count on every rank).

        Also logs the CFM and CCM parts next to those of the trivial predictors on the same
        masks (`musicoder.model.baselines`): a model no better than interpolation has learned
        little that a probe could use. Sums stay on the device until one all-reduce at the end.
        """
        if self.val_stream is None:
            return None
        self.engine.eval()
        contrastive = bool(self.config.loss.contrastive_weight)
        names = ["loss/val", "val/cfm", "val/ccm"]
        names += [f"val/{part}_{b}" for b in BASELINES for part in ("cfm", "ccm")]
        names += ["val/contrastive", "val/pair_accuracy"] if contrastive else []
        names += ["val/teacher"] if self.teacher is not None else []
        sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.device)
        for i, (batch, _) in enumerate(self.val_stream):
            if i >= self.config.data.val_max_batches:
                break
            target = self._model_batch(batch.to(self.device))
            out = self.engine(target.masked_input, target.valid)
            loss = reconstruction_loss(out.reconstruction.float(), target)  # masked cells only
            parts = [loss.total, loss.cfm, loss.ccm]
            for trivial in baseline_losses(target).values():
                parts += [trivial.cfm, trivial.ccm]
            if contrastive:
                temperature = self.config.loss.contrastive_temperature
                parts += [
                    contrastive_loss(out.projection, target.valid, temperature=temperature),
                    pair_accuracy(out.projection),
                ]
            if self.teacher is not None:
                parts.append(teacher_term(out, target, self.config.loss, self._targets(target)))
            sums[:-1] += torch.stack(
                [torch.as_tensor(p, dtype=torch.float64, device=self.device) for p in parts]
            )
            sums[-1] += 1.0
        self.engine.train()
        totals = self._all_sum(sums)
        values = {name: totals[k] / totals[-1] for k, name in enumerate(names)}
        self.tb.scalars(self.state.step, values)
        log_rank_zero(
            "val loss %.4f; CFM %.4f (interpolation %.4f, clip mean %.4f)",
            values["loss/val"],
            values["val/cfm"],
            values["val/cfm_interpolate"],
            values["val/cfm_clip_mean"],
        )
        return values["loss/val"]

    # ---------------------------------------------------------------- save / close
    def save(self) -> str:
        """Checkpoint on every rank (collective); returns the tag."""
        tag = checkpoint.save(
            self.engine,
            self.ckpt_dir,
            self.state,
            keep_last=self.config.train.keep_last,
            teacher=self.teacher,
        )
        self.tb.flush()
        return tag

    def close(self) -> None:
        """Stop loader workers, close TensorBoard, restore signals, leave the process group."""
        import torch.distributed as dist

        if self._batches is not None:
            self._batches.close()
        if self.tb is not None:
            self.tb.close()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _default_group_timeout(timeout: timedelta) -> None:
    """Make `timeout` the default of every process group, not only of the world: torch gives
    a group made by `new_group` without a timeout (DeepSpeed's data-parallel groups, where the
    gradient all-reduces run) its module default of 30 minutes, not the world's."""
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    if isinstance(getattr(distributed_c10d, "default_pg_nccl_timeout", None), timedelta):
        distributed_c10d.default_pg_nccl_timeout = timeout


def allreduce_buffer_path(rank: int) -> str:
    """The /dev/shm file DeepSpeed's CPU accelerator gives `rank` for its all-reduce when every
    rank of the job is on one host (its shm comm op names it after the rendezvous address)."""
    return SHM_BUFFER.format(
        uid=os.getuid(),
        addr=os.environ.get("MASTER_ADDR", ""),
        port=os.environ.get("MASTER_PORT", ""),
        rank=rank,
    )


def unlink_allreduce_buffer(rank: int, world: int) -> None:
    """Remove this rank's name of DeepSpeed's CPU all-reduce buffer (66 MiB in /dev/shm).

    DeepSpeed creates one per rank of a one-host job and never unlinks it, so every CPU run
    left `world` of them behind, killed or not, until /dev/shm (half the RAM) was full. Each
    rank maps every peer's buffer inside `init_distributed`; once all ranks are past it (the
    barrier), the names are no longer needed: the mappings stay valid and the kernel frees the
    memory when the last rank exits, however it exits. Collective: call on every rank.
    """
    import torch.distributed as dist

    if world > 1:
        dist.barrier()
    with contextlib.suppress(FileNotFoundError):  # multi-host jobs and builds without the op
        os.unlink(allreduce_buffer_path(rank))


def data_change(saved: dict, config: PretrainConfig) -> str | None:
    """What a resume should warn about when `config` trains on other data (`data.manifest`,
    `data.sources`) than the checkpoint's resolved config `saved`; None when it is the same."""
    before, now = saved.get("data", {}), _config_dict(config)["data"]
    if all(before.get(key) == now[key] for key in ("manifest", "sources")):
        return None
    return (
        f"resuming on other data than the checkpoint's (data.manifest {before.get('manifest')!r}, "
        f"data.sources {before.get('sources')}): the data position is kept, but the samples it "
        "leads to are not the ones the run would have seen"
    )


def _config_dict(cfg: PretrainConfig) -> dict:
    from musicoder.config import to_dict

    return to_dict(cfg)


def _memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def run(
    config: PretrainConfig, *, deepspeed_config: str, resume: Literal["auto"] | None = None
) -> checkpoint.ClientState:
    """Pre-train with `config`; returns the final client state (step, samples, position)."""
    trainer = Pretrainer(config, deepspeed_config=deepspeed_config, resume=resume)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def default_single_process_env() -> None:
    """Let plain `python launch/pretrain.py` run as one rank: fill in the variables the
    DeepSpeed launcher would set (a free loopback port when none is given)."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, value)
