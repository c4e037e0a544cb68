"""Tests for musicoder/shardset/reader.py: the sequential tar reader against tarfile-written
archives in every format, its header fast path against tarfile's parser, payload buffer
recycling, and refusal of corrupt or hostile tars."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.reader import (
    BLOCK,
    MAX_MEMBER_BYTES,
    BufferPool,
    iter_members,
    iter_samples,
    parse_header,
)
from musicoder.shardset.sample import decode_features


def _tar(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("somedir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # not a regular file: skipped
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class ShortReads(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a network body."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._f.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(fmt):
    long = "deep/" * 30 + "k\u00e9y_00001.feat.npy"  # > 100 chars, non-ASCII: GNU/pax records
    members = [
        ("a_00000.feat.npy", b"x" * 700),
        ("pre/" * 30 + "fix_00000.json", b"[1]"),  # ustar: split into prefix and name
        ("a_00000.json", b"{}"),
        ("empty.bin", b""),
        ("b_00000.json", bytes(range(256)) * 3),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        members.append((long, b"long" * 200))
    data = _tar(members, fmt)
    got = [(name, bytes(payload)) for name, payload in iter_members(ShortReads(data))]
    assert got == members


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_header_fast_path_matches_tarfile(fmt):
    members = [("a_0.feat.npy", b"x" * 700), ("pre/" * 30 + "b_1.json", b"{}"), ("c", b"")]
    data = _tar(members + [("k\u00e9y_2.json", b"1")] * (fmt != tarfile.USTAR_FORMAT), fmt)
    pos = 0
    while data[pos : pos + BLOCK].count(0) < BLOCK:
        header = bytearray(data[pos : pos + BLOCK])
        info = tarfile.TarInfo.frombuf(bytes(header), "utf-8", "surrogateescape")
        assert parse_header(header) == (info.name, info.size, info.type)
        pos += BLOCK + -(-info.size // BLOCK) * BLOCK
    header = bytearray(_tar(members, tarfile.USTAR_FORMAT)[BLOCK : 2 * BLOCK])  # a_0.feat.npy
    assert parse_header(header)[0] == "a_0.feat.npy"
    header[130] ^= 1  # a size digit: the checksum no longer matches
    with pytest.raises(tarfile.InvalidHeaderError, match="checksum"):
        parse_header(header)
    with pytest.raises(tarfile.EOFHeaderError):
        parse_header(bytearray(BLOCK))


def test_buffer_pool_recycles_payloads():
    arrays = [np.full((50, 4), i, np.float16) for i in range(4)]
    members = []
    for i, array in enumerate(arrays):
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        members.append((f"k_{i}.feat.npy", buf.getvalue()))
    pool, buffers = BufferPool(limit=2), []
    for _, payload in iter_members(io.BytesIO(_tar(members, tarfile.PAX_FORMAT)), pool.take):
        feats = decode_features(payload)
        np.testing.assert_array_equal(feats, arrays[len(buffers)])  # never a stale payload
        buffers.append(payload)
        pool.give(feats[10:20])  # a crop of it: its buffer is found through the views
    assert buffers[1] is buffers[0] and buffers[3] is buffers[2]
    pool.give(np.zeros(3))  # not a payload: ignored
    assert pool.take(7) is not buffers[0] and len(pool.take(7)) == 7


def test_samples_group_by_key_and_reject_duplicates():
    data = _tar(
        [
            ("a_0.feat.npy", b"1"),
            ("a_0.json", b"2"),
            ("dir/b_1.json", b"3"),
            ("README", b"no suffix"),
        ],
        tarfile.USTAR_FORMAT,
    )
    samples = list(iter_samples(io.BytesIO(data), "x.tar"))
    assert [s["__key__"] for s in samples] == ["a_0", "dir/b_1"]
    assert bytes(samples[0]["feat.npy"]) == b"1" and bytes(samples[1]["json"]) == b"3"
    dup = _tar([("a_0.json", b"1"), ("a_0.json", b"2")], tarfile.USTAR_FORMAT)
    with pytest.raises(ShardFormatError, match="x.tar: member a_0.json appears twice"):
        list(iter_samples(io.BytesIO(dup), "x.tar"))


def test_truncated_and_corrupt_tars_raise():
    data = _tar([("a_0.feat.npy", b"z" * 5000)], tarfile.USTAR_FORMAT)
    with pytest.raises(tarfile.ReadError, match="truncated tar member"):
        list(iter_members(io.BytesIO(data[:3000])))
    with pytest.raises(tarfile.ReadError, match="truncated tar header"):
        list(iter_members(io.BytesIO(data[:700])))
    with pytest.raises(tarfile.HeaderError):
        list(iter_members(io.BytesIO(b"not a tar at all" * 100)))


def test_member_size_over_the_limit_is_refused_before_allocation():
    """A corrupt or hostile size field must not allocate (or MemoryError) the loader away."""
    info = tarfile.TarInfo("x.feat.npy")
    info.size = MAX_MEMBER_BYTES + 1
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    asked = []
    with pytest.raises(tarfile.ReadError, match="member size"):
        list(iter_members(io.BytesIO(bytes(header)), alloc=lambda n: asked.append(n)))
    assert asked == []
