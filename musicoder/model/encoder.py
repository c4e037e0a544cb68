"""The MusiCoder encoder: features in, hidden states per layer out (DESIGN §6, STYLE §13).

Input projection + sinusoidal positions + LayerNorm, then pre-LN Transformer layers built on
`scaled_dot_product_attention` (so PyTorch picks flash / memory-efficient kernels on GPU), then a
final LayerNorm. Padding is excluded as attention keys. The encoder never masks: masking is a
data-side pure function (`musicoder.model.masking`).
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from musicoder.model.config import MusiCoderConfig

log = logging.getLogger(__name__)

INIT_STD = 0.02  # BERT/GPT-2 weight init


class EncoderOutput(NamedTuple):
    """Encoder result.

    A NamedTuple rather than a dataclass: DeepSpeed ZeRO-3 finds the tensors in a module's
    output to attach its backward hooks, and it walks tuples, lists and dicts (rebuilding a
    namedtuple by its class) but not dataclasses. Attribute access is the public API.

    Attributes:
        last_hidden: (B, T, hidden), after the final LayerNorm.
        hidden_states: None unless requested; else num_layers + 1 tensors (B, T, hidden):
            [after input projection + positions + LayerNorm, after layer 1, ..., after layer L],
            where the last entry is `last_hidden` (final LayerNorm applied, as in HF pre-LN models).
    """

    last_hidden: Tensor
    hidden_states: list[Tensor] | None = None


def sinusoidal_positions(num_positions: int, dim: int) -> Tensor:
    """Fixed sin/cos position table of "Attention Is All You Need".

    Returns:
        (num_positions, dim) float32; even columns sin, odd columns cos.
    """
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention over `scaled_dot_product_attention`."""

    def __init__(self, config: MusiCoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        b, t, h = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, h // self.heads)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, t, h))  # (B, T, hidden)


class EncoderLayer(nn.Module):
    """Pre-LN Transformer layer: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: MusiCoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden, config.ffn),
            nn.GELU(),
            nn.Linear(config.ffn, config.hidden),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), attn_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


def key_padding_mask(valid: Tensor) -> Tensor | None:
    """SDPA boolean mask (B, 1, 1, T), True = may attend; None when nothing is padded.

    A clip without any valid frame would leave every key masked and softmax would give NaN; such
    clips attend to all (padding) frames instead, so their (ignored) outputs stay finite.
    """
    if bool(valid.all()):
        return None  # lets SDPA use its fastest kernels
    keys = valid | ~valid.any(dim=1, keepdim=True)  # (B, T)
    return keys[:, None, None, :]


class MusiCoderEncoder(nn.Module):
    """Maps (B, T, input_dim) features + (B, T) validity to (B, T, hidden) states.

    Args:
        config: Model shape; see `MusiCoderConfig`.
    """

    def __init__(self, config: MusiCoderConfig) -> None:
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.input_dim, config.hidden)
        # Not persistent: derived from the config, so exports carry only learned weights.
        self.register_buffer(
            "positions",
            sinusoidal_positions(config.max_frames, config.hidden) * config.position_scale,
            persistent=False,
        )
        self.input_norm = nn.LayerNorm(config.hidden)
        self.input_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden)
        self.apply(init_weights)
        # GPT-2: shrink residual-branch outputs so the residual stream's variance stays O(1).
        for layer in self.layers:
            for linear in (layer.attn.out, layer.ffn[2]):
                nn.init.normal_(linear.weight, std=INIT_STD / math.sqrt(2 * config.num_layers))

    def forward(
        self, x: Tensor, valid: Tensor, *, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """Encode a padded batch.

        Args:
            x: (B, T, input_dim) (masked) features.
            valid: (B, T) bool, True = real frame.
            output_hidden_states: Also return every layer's output.

        Returns:
            `EncoderOutput`; outputs at padded positions are finite but meaningless.

        Raises:
            ValueError: Wrong input width, or T longer than `config.max_frames`.
        """
        b, t, c = x.shape
        if c != self.config.input_dim:
            raise ValueError(f"encoder input: expected {self.config.input_dim} channels, got {c}")
        if t > self.config.max_frames:
            raise ValueError(
                f"encoder input: {t} frames exceed model.max_frames={self.config.max_frames}; "
                "split the sequence into chunks"
            )
        h = self.input_proj(x) + self.positions[:t].to(x.dtype)
        h = self.input_dropout(self.input_norm(h))  # (B, T, hidden)
        attn_mask = key_padding_mask(valid)
        states = [h] if output_hidden_states else None
        for layer in self.layers:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, attn_mask, use_reentrant=False)
            else:
                h = layer(h, attn_mask)
            if states is not None:
                states.append(h)
        h = self.final_norm(h)
        if states is not None:
            states[-1] = h
        return EncoderOutput(last_hidden=h, hidden_states=states)


def init_weights(module: nn.Module) -> None:
    """BERT-style init: N(0, 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
