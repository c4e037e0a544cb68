"""Tests for musicoder/shardset/writer.py: deterministic headers and bytes, clean failure."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from musicoder.shardset.writer import TAR_MODE, TAR_UNAME, ShardTarWriter

MEMBERS = [
    ("k0_00000.feat.npy", b"\x93NUMPY" + bytes(100)),
    ("k0_00000.json", b'{"a": 1}'),
    ("k0_00001.feat.npy", bytes(1000)),
    ("k0_00001.json", b"{}"),
]


def _write(path: Path, members=MEMBERS) -> bytes:
    with ShardTarWriter(path) as w:
        for name, data in members:
            if len(data) > 500:  # exercise the file-object path
                w.add(name, io.BytesIO(data), len(data))
            else:
                w.add(name, data)
    assert w.summary is not None and w.summary.members == len(members)
    assert w.summary.bytes == path.stat().st_size
    return path.read_bytes()


def test_same_members_give_identical_bytes_and_fixed_headers(tmp_path: Path):
    first = _write(tmp_path / "a.tar")
    second = _write(tmp_path / "b.tar")
    assert first == second
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [n for n, _ in MEMBERS]
        assert [tar.extractfile(i).read() for i in infos] == [d for _, d in MEMBERS]
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (
            0,
            0,
            0,
            TAR_UNAME,
            TAR_UNAME,
            TAR_MODE,
        )
        assert info.pax_headers == {}


def test_summary_hash_and_order_matter(tmp_path: Path):
    import hashlib

    data = _write(tmp_path / "a.tar")
    with ShardTarWriter(tmp_path / "c.tar") as w:
        for name, payload in reversed(MEMBERS):
            w.add(name, payload)
    assert w.close().sha256 == hashlib.sha256((tmp_path / "c.tar").read_bytes()).hexdigest()
    assert (tmp_path / "c.tar").read_bytes() != data


def test_error_leaves_no_file_and_closed_writer_refuses(tmp_path: Path):
    with pytest.raises(RuntimeError), ShardTarWriter(tmp_path / "x.tar") as w:
        w.add("a.json", b"{}")
        raise RuntimeError("boom")
    assert not (tmp_path / "x.tar").exists()
    with ShardTarWriter(tmp_path / "y.tar") as w:
        pass
    with pytest.raises(ValueError, match="closed"):
        w.add("b.json", b"{}")
    with (
        pytest.raises(ValueError, match="size is required"),
        ShardTarWriter(tmp_path / "z.tar") as w2,
    ):
        w2.add("c.bin", io.BytesIO(b"abc"))
