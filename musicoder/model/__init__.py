"""MusiCoder model: config and variants, the `Batch` contract, encoder, reconstruction head,
CFM/CCM masking, the reconstruction loss, pooling over time and FLOP counts (DESIGN §6).

Nothing here does I/O or distributed work, or knows about DeepSpeed: exports are written and
read by `musicoder.pretrained`.
"""

from musicoder.model.batch import STD_FLOOR, Batch
from musicoder.model.config import VARIANTS, MusiCoderConfig, variant_config
from musicoder.model.encoder import EncoderOutput, MusiCoderEncoder
from musicoder.model.flops import count_parameters, flops_per_frame
from musicoder.model.heads import ModelOutput, MusiCoder, ReconstructionHead
from musicoder.model.contrastive import split_halves
from musicoder.model.loss import LossConfig, LossOutput, pretraining_loss, reconstruction_loss
from musicoder.model.masking import MaskingConfig, draw_masks, model_input

__all__ = [
    "STD_FLOOR",
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
    "count_parameters",
    "draw_masks",
    "flops_per_frame",
    "model_input",
    "pretraining_loss",
    "reconstruction_loss",
    "split_halves",
    "variant_config",
]
