"""Analytic parameter and FLOP counts, for logging model size, TFLOP/s and MFU.

FLOPs count matrix multiplications only, 2*m*n*k each (softmax, norms and activations are a few
percent at most); training costs forward + backward = 3 x forward.
"""

from __future__ import annotations

import logging

from musicoder.model.config import MusiCoderConfig

log = logging.getLogger(__name__)

TRAIN_FLOPS_MULTIPLIER = 3  # backward ~ 2 x forward (grads for inputs and for weights)


def count_parameters(config: MusiCoderConfig, *, include_head: bool = True) -> int:
    """Number of parameters of `MusiCoder` (or of the encoder alone), from the config.

    Args:
        config: Model shape.
        include_head: Count the reconstruction head too.

    Returns:
        Parameter count; equals `sum(p.numel() for p in model.parameters())`.
    """
    c, h, f = config.input_dim, config.hidden, config.ffn
    embed = c * h + h + 2 * h  # input projection + LayerNorm
    layer = (3 * h * h + 3 * h) + (h * h + h) + (2 * h * f + f + h) + 2 * 2 * h  # attn, ffn, 2 LNs
    encoder = embed + config.num_layers * layer + 2 * h  # + final LayerNorm
    head = (h * h + h) + 2 * h + (h * c + c)
    return encoder + (head if include_head else 0)


def flops_per_frame(config: MusiCoderConfig, seq_len: int) -> float:
    """Training FLOPs per input frame of `MusiCoder` at sequence length `seq_len`.

    Per frame and layer the forward pass does QKV (2*3h^2), attention scores and weighted sum
    (2*T*h each), the output projection (2h^2) and the feed-forward (2*2*h*ffn); add the input
    projection (2*C*h) and the head (2h^2 + 2*h*C), then multiply by 3 for forward + backward.

    Args:
        config: Model shape.
        seq_len: Frames per sequence T (attention cost grows with it).

    Returns:
        FLOPs per frame for one forward + backward pass.
    """
    c, h, f, t = config.input_dim, config.hidden, config.ffn, seq_len
    layer = 2 * 3 * h * h + 2 * t * h + 2 * t * h + 2 * h * h + 2 * 2 * h * f
    forward = 2 * c * h + config.num_layers * layer + 2 * h * h + 2 * h * c
    return float(TRAIN_FLOPS_MULTIPLIER * forward)
