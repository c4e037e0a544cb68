"""MusiCoder model: config and variants, the `Batch` contract, encoder, reconstruction head,
CFM/CCM masking, the reconstruction loss, FLOP counts and encoder export (DESIGN §6).

Nothing here does distributed work or knows about DeepSpeed; only `export` touches storage.
"""

from musicoder.model.batch import Batch
from musicoder.model.config import VARIANTS, MusiCoderConfig, variant_config
from musicoder.model.encoder import EncoderOutput, MusiCoderEncoder
from musicoder.model.export import load_encoder_weights, save_encoder
from musicoder.model.flops import count_parameters, flops_per_frame
from musicoder.model.heads import ModelOutput, MusiCoder, ReconstructionHead
from musicoder.model.loss import LossConfig, LossOutput, reconstruction_loss
from musicoder.model.masking import (
    MaskingConfig,
    apply_masking,
    draw_masks,
    mask_channels,
    mask_frames,
    model_input,
)

__all__ = [
    "VARIANTS",
    "Batch",
    "EncoderOutput",
    "LossConfig",
    "LossOutput",
    "MaskingConfig",
    "ModelOutput",
    "MusiCoder",
    "MusiCoderConfig",
    "MusiCoderEncoder",
    "ReconstructionHead",
    "apply_masking",
    "count_parameters",
    "draw_masks",
    "flops_per_frame",
    "load_encoder_weights",
    "mask_channels",
    "mask_frames",
    "model_input",
    "reconstruction_loss",
    "save_encoder",
    "variant_config",
]
