"""Tests for musicoder/model/export.py: round trip, no pickle, clear errors on mismatch."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from musicoder.model import (
    MusiCoder,
    MusiCoderEncoder,
    load_encoder_weights,
    save_encoder,
    variant_config,
)

EXTRA = {
    "preset": "logmel128",
    "feature": {"preset": "logmel128"},
    "stats": {"mean": [0.0] * 128, "std": [1.0] * 128},
}


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    model = MusiCoder(variant_config("tiny", input_dim=128)).eval()
    save_encoder(model, str(tmp_path), extra=EXTRA)
    return model, tmp_path


def test_round_trip_gives_identical_outputs(exported):
    model, out_dir = exported
    x, valid = torch.randn(2, 20, 128), torch.ones(2, 20, dtype=torch.bool)
    valid[1, 15:] = False
    with torch.no_grad():
        want = model.encoder(x, valid, output_hidden_states=True)
        for source in (str(out_dir), str(out_dir / "encoder.safetensors")):
            encoder, config = load_encoder_weights(source)
            assert isinstance(encoder, MusiCoderEncoder) and not encoder.training
            got = encoder(x, valid, output_hidden_states=True)
            assert torch.equal(got.last_hidden, want.last_hidden)
            for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
                assert torch.equal(a, b)
    assert config["format"] == "musicoder-encoder" and config["format_version"] == 1
    assert config["model"] == model.config.to_dict()
    assert config["stats"] == EXTRA["stats"] and config["preset"] == "logmel128"


def test_export_holds_only_encoder_tensors(exported):
    model, out_dir = exported
    tensors = safetensors.torch.load_file(str(out_dir / "encoder.safetensors"))
    assert set(tensors) == set(model.encoder.state_dict())
    assert not any(name.startswith("head") for name in tensors)
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "encoder.safetensors"]


def test_shape_mismatch_is_rejected_with_file_and_tensor(exported):
    _, out_dir = exported
    config = json.loads((out_dir / "config.json").read_text())
    config["model"]["ffn"] = 256
    (out_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        load_encoder_weights(str(out_dir))
    message = str(info.value)
    assert "\n" not in message
    assert "encoder.safetensors" in message and "layers.0.ffn.0.weight" in message
    assert "(512, 128)" in message and "(256, 128)" in message


def test_missing_or_extra_tensor_is_rejected(exported):
    _, out_dir = exported
    path = out_dir / "encoder.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    removed = tensors.pop("final_norm.weight")
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"safetensors: missing tensor 'final_norm.weight'"):
        load_encoder_weights(str(out_dir))
    tensors.update({"final_norm.weight": removed, "surprise": torch.zeros(1)})
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"encoder.safetensors: unexpected tensor 'surprise'"):
        load_encoder_weights(str(out_dir))


def test_bad_files_give_clear_errors(tmp_path, exported):
    _, out_dir = exported
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_encoder_weights(str(tmp_path / "nowhere"))
    (out_dir / "encoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="encoder.safetensors: not a readable safetensors file"):
        load_encoder_weights(str(out_dir))
    (out_dir / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="config.json: not a MusiCoder encoder export"):
        load_encoder_weights(str(out_dir))


def test_save_rejects_reserved_extra_keys_and_other_modules(tmp_path):
    encoder = MusiCoderEncoder(variant_config("tiny"))
    with pytest.raises(ValueError, match=r"reserved key\(s\) \['model'\]"):
        save_encoder(encoder, str(tmp_path), extra={"model": {}})
    with pytest.raises(TypeError, match="got Linear"):
        save_encoder(torch.nn.Linear(2, 2), str(tmp_path), extra={})
