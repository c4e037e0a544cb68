"""Export and import of a trained encoder: `encoder.safetensors` + `config.json` (no pickle).

An export is what crosses the trust boundary to downstream users (DESIGN §7, §8), so it holds
only tensors (safetensors) and JSON: the model config plus whatever the caller adds (feature
preset, feature config, normalization stats). The reconstruction head is not exported.
Everything goes through `musicoder.storage`, so `out_dir` may be local or `s3://`; storage is
imported lazily so that importing the model does not pull in boto3.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from musicoder.model.config import MusiCoderConfig
from musicoder.model.encoder import MusiCoderEncoder
from musicoder.model.heads import MusiCoder

log = logging.getLogger(__name__)

EXPORT_FORMAT = "musicoder-encoder"
EXPORT_FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
RESERVED_KEYS = ("format", "format_version", "model")


def _encoder_of(model_or_encoder: nn.Module) -> MusiCoderEncoder:
    if isinstance(model_or_encoder, MusiCoder):
        return model_or_encoder.encoder
    if isinstance(model_or_encoder, MusiCoderEncoder):
        return model_or_encoder
    name = type(model_or_encoder).__name__
    raise TypeError(f"save_encoder: expected MusiCoder or MusiCoderEncoder, got {name}")


def save_encoder(model_or_encoder: nn.Module, out_dir: str, *, extra: dict[str, Any]) -> None:
    """Write `out_dir/encoder.safetensors` (float32) and then `out_dir/config.json`.

    Args:
        model_or_encoder: A `MusiCoder` (its encoder is exported) or a `MusiCoderEncoder`.
        out_dir: Local directory or storage URI.
        extra: JSON-serializable keys added to config.json, normally `preset`, `feature`
            (FeatureConfig as a dict) and `stats` ({"mean": [...], "std": [...]}).

    Raises:
        TypeError: Not a MusiCoder model or encoder.
        ValueError: `extra` uses a reserved key (format, format_version, model).
    """
    from musicoder import storage

    encoder = _encoder_of(model_or_encoder)
    clash = [key for key in RESERVED_KEYS if key in extra]
    if clash:
        raise ValueError(f"save_encoder: extra must not set reserved key(s) {clash}")
    tensors = {
        name: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().contiguous()
        for name, t in encoder.state_dict().items()
    }
    metadata = {"format": EXPORT_FORMAT, "format_version": str(EXPORT_FORMAT_VERSION)}
    storage.write_bytes(
        storage.join(out_dir, WEIGHTS_FILE), safetensors.torch.save(tensors, metadata=metadata)
    )
    config = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "model": encoder.config.to_dict(),
        **extra,
    }
    # Written last: a config.json means the weights beside it are complete.
    storage.write_json(storage.join(out_dir, CONFIG_FILE), config)
    log.info("exported encoder (%d tensors) to %s", len(tensors), out_dir)


def _export_paths(dir_or_file: str) -> tuple[str, str]:
    """(weights URI, config URI) for an export dir or a `.safetensors` path."""
    from musicoder import storage

    if dir_or_file.endswith(".safetensors"):
        return dir_or_file, storage.join(posixpath.dirname(dir_or_file) or ".", CONFIG_FILE)
    return storage.join(dir_or_file, WEIGHTS_FILE), storage.join(dir_or_file, CONFIG_FILE)


def _read_tensors(uri: str) -> dict[str, torch.Tensor]:
    from musicoder import storage

    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: encoder weights not found")
    try:
        if storage.is_local(uri):  # memory-mapped, no second copy of a multi-GB file
            return safetensors.torch.load_file(str(storage.local_path(uri)))
        return safetensors.torch.load(storage.read_bytes(uri))
    except safetensors.SafetensorError as err:
        raise ValueError(f"{uri}: not a readable safetensors file ({err})") from err


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str
) -> None:
    """Raise a one-line ValueError naming `source` and the first missing, extra or misshapen
    tensor."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        count = len(unexpected)
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]!r} ({count} in all)")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(got.shape)} but config.json "
                f"implies {tuple(want.shape)}"
            )


def load_encoder_weights(dir_or_file: str) -> tuple[MusiCoderEncoder, dict[str, Any]]:
    """Load an exported encoder without DeepSpeed or pickle.

    Args:
        dir_or_file: Export directory (local or URI), or a `.safetensors` path with
            `config.json` beside it.

    Returns:
        (encoder in eval mode on CPU, float32; the whole config.json as a dict).

    Raises:
        FileNotFoundError: Weights or config.json missing.
        ValueError: Wrong format, invalid model config, or tensors that do not match it.
    """
    from musicoder import storage

    weights_uri, config_uri = _export_paths(dir_or_file)
    config = storage.read_json(config_uri)
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{config_uri}: not a MusiCoder encoder export (format != {EXPORT_FORMAT!r})"
        )
    if config.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{config_uri}: unsupported format_version {config.get('format_version')!r}, "
            f"expected {EXPORT_FORMAT_VERSION}"
        )
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{config_uri}: missing 'model' section")
    model_config = MusiCoderConfig.from_dict(config["model"], source=config_uri)
    tensors = _read_tensors(weights_uri)
    encoder = MusiCoderEncoder(model_config)
    check_tensors(tensors, encoder.state_dict(), weights_uri)
    encoder.load_state_dict(tensors, strict=True)
    return encoder.eval(), config
