"""Tests for musicoder/shardset/sample.py: npy decoding without pickle, the finite check, and
`decode_sample`'s checks (members, preset, shape, finite values)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.sample import all_finite, decode_features, decode_sample


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float16).reshape(4, 3),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3)),
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian: converted to native
        np.zeros((0, 5), dtype=np.float16),
    ],
)
def test_decode_features_equals_numpy(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    got = decode_features(bytearray(buf.getvalue()))
    np.testing.assert_array_equal(got, array)
    assert got.dtype.isnative and got.shape == array.shape


def test_decode_features_refuses_pickle_and_garbage():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object dtype"):
        decode_features(buf.getvalue())
    with pytest.raises(ValueError, match="not an npy"):
        decode_features(b"PK\x03\x04 zip file")
    buf = io.BytesIO()
    np.save(buf, np.ones((100, 4), np.float16))
    with pytest.raises(ValueError, match="needs more"):
        decode_features(buf.getvalue()[:-10])


def test_all_finite_on_every_float16_bit_pattern():
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16)
    for value, finite in zip(values, np.isfinite(values), strict=True):
        assert all_finite(np.array([[0.5, value, -2.0]], np.float16)) == finite


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_all_finite(dtype):
    x = np.linspace(-60000, 60000, 1000).astype(dtype).reshape(100, 10)
    assert all_finite(x)
    for bad in (np.inf, -np.inf, np.nan):
        y = x.copy()
        y[37, 3] = bad
        assert not all_finite(y)


def _sample(feats: np.ndarray, preset: str = "musicoder324") -> dict:
    buf = io.BytesIO()
    np.save(buf, feats, allow_pickle=False)
    meta = json.dumps({"preset": preset, "source": "a.wav", "segment": 3}).encode()
    return {"__key__": "k_00003", "feat.npy": bytearray(buf.getvalue()), "json": bytearray(meta)}


def test_decode_sample_checks_preset_shape_and_values():
    good = np.ones((5, 4), np.float16)
    feats, meta = decode_sample(_sample(good), 4, "musicoder324")
    assert np.array_equal(feats, good) and meta["segment"] == 3
    bad = good.copy()
    bad[2, 1] = np.inf
    for sample, reason in (
        (_sample(good, "logmel128"), "preset"),
        (_sample(good[:, :3]), "shape"),
        (_sample(np.ones((0, 4), np.float16)), "shape"),
        (_sample(bad), "non-finite"),
        (_sample(good.astype(np.int16)), "dtype"),
        ({"__key__": "k", "json": b"{}"}, "needs"),
    ):
        with pytest.raises(ShardFormatError, match=reason):
            decode_sample(sample, 4, "musicoder324")
