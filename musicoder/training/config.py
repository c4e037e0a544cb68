"""The pre-training config: `PretrainConfig`, the root of the pretrain YAML, and its `train:`
section `TrainConfig` (DESIGN §7: the YAML owns lr, steps, batch, accumulation and precision;
the DeepSpeed JSON owns distribution, see `training/dsconfig.py`).

Apart from the trainer so that checkpoints and tools read a run's config without DeepSpeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from musicoder import storage
from musicoder.data.stream import DataConfig
from musicoder.model import LossConfig, MaskingConfig, MusiCoder, MusiCoderConfig, variant_config


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping knobs owned by the pretrain YAML."""

    lr: float = 3e-4  # peak learning rate (injected into the DeepSpeed optimizer)
    warmup_steps: int = 100  # linear warm-up, then the JSON's scheduler decays to max_steps
    max_steps: int = 1000  # optimizer steps
    micro_batch: int = 8  # clips per rank per micro step
    grad_accum: int = 1  # micro steps per optimizer step
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # fp16 needs a GPU
    save_every: int = 500  # checkpoint every N steps (and at the end, and on SIGTERM)
    keep_last: int = 3  # complete checkpoints kept (>= 2: the newest and one to fall back to)
    log_every: int = 10  # TensorBoard scalars every N steps
    image_every: int = 200  # input/masked/reconstruction image every N steps (0 = never)
    val_every: int = 200  # validation loss every N steps (0 = never)
    output_dir: str = "runs/pretrain"  # local or shared filesystem (DeepSpeed writes here)
    seed: int = 0
    # A collective that waits longer than this fails, so a dead or hung node ends the job
    # instead of stalling it for torch's 30 minutes; must exceed the longest wait of one rank
    # for the others (a checkpoint save, the first batches from storage).
    collective_timeout_s: float = 600.0
    peak_tflops: float = 989.0  # per-device dense bf16 peak for MFU (H100 SXM datasheet)
    # Keep the encoder's input projection at its random init (MoCo v3's frozen patch
    # projection): layer 0 stays a full-rank random view of the inputs (docs/decisions.md).
    freeze_input_projection: bool = False

    def __post_init__(self) -> None:
        for key in (
            "max_steps",
            "micro_batch",
            "grad_accum",
            "save_every",
            "keep_last",
            "log_every",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.keep_last < 2:  # a torn newest checkpoint needs a complete one to fall back to
            raise ValueError(
                f"train.keep_last: must be >= 2 (the newest checkpoint and one to fall back to "
                f"if the newest is torn), got {self.keep_last}"
            )
        for key in ("warmup_steps", "image_every", "val_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key}: must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0 or self.peak_tflops <= 0 or self.collective_timeout_s <= 0:
            raise ValueError("train.lr, train.peak_tflops, train.collective_timeout_s: must be > 0")
        if not storage.is_local(self.output_dir):
            raise ValueError(
                f"train.output_dir: {self.output_dir} must be a local or shared "
                "filesystem path (DeepSpeed checkpoints and TensorBoard write files)"
            )


@dataclass
class PretrainConfig:
    """Root config of `launch/pretrain.py`."""

    variant: Literal["tiny", "base", "large", "xl"] = "tiny"  # size table in musicoder.model
    model: dict[str, Any] = field(default_factory=dict)  # MusiCoderConfig fields to override
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.model_config()  # unknown or invalid model keys fail at load time
        if self.loss.contrastive_weight and self.data.max_frames % 2:
            raise ValueError(
                "loss.contrastive_weight: the model trains on crop halves, so data.max_frames "
                f"must be even, got {self.data.max_frames}"
            )
        if self.data.window_pairs and not self.loss.contrastive_weight:
            raise ValueError(
                "data.window_pairs: the two windows of a crop are the contrastive term's pair; "
                "without loss.contrastive_weight the model would read them as one stretch"
            )

    def model_config(self) -> MusiCoderConfig:
        """The variant's MusiCoderConfig with `model` overrides applied."""
        return variant_config(self.variant, **dict(self.model))

    def build_model(self) -> MusiCoder:
        """The pre-training model of this config (encoder, reconstruction head, and the
        projection and regression heads its loss terms need)."""
        return MusiCoder(
            self.model_config(),
            projection_dim=self.loss.projection_dim,
            regressor=bool(self.loss.teacher_weight),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Rebuild from `musicoder.config.to_dict` output (e.g. a checkpoint's client state)."""
        from omegaconf import OmegaConf

        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
