"""Tests for musicoder/storage/uri.py: schemes, local paths, joining, and the one parent /
basename helper."""

from __future__ import annotations

import pytest

from musicoder import storage


def test_uri_helpers(tmp_path):
    assert storage.is_local("rel/x.wav") and storage.is_local("take:1.wav")
    assert storage.is_local("file:///a/b") and not storage.is_local("s3://b/k")
    assert storage.local_path("file:///a/b%20c") == storage.local_path("/a/b%20c")
    assert str(storage.local_path("file://localhost/a")) == "/a"
    assert storage.join("s3://b/", "x/", "y.wav") == "s3://b/x/y.wav"
    assert storage.join("file:///d", "x") == "file:///d/x"
    for bad, call in [
        ("gs://b/k", storage.is_local),
        ("s3://b/k", storage.local_path),
        ("file://rel/x", storage.local_path),
        ("", storage.is_local),
    ]:
        with pytest.raises(ValueError):
            call(bad)
    for part in ("../x", "a/../../b", "/etc/passwd"):
        with pytest.raises(ValueError, match="unsafe"):
            storage.join(str(tmp_path), part)
    assert storage.real_key("s3://b/k") == "s3://b/k"


@pytest.mark.parametrize(
    "uri,parent,name",
    [
        ("a/b/c.json", "a/b", "c.json"),
        ("c.json", ".", "c.json"),
        ("/x/y/", "/x", "y"),
        ("take:2.wav", ".", "take:2.wav"),
        ("s3://b/k/m.json", "s3://b/k", "m.json"),
        ("s3://b/m.json", "s3://b", "m.json"),
        ("s3://b/p/", "s3://b", "p"),
        ("file:///a/b/c", "file:///a/b", "c"),
    ],
)
def test_parent_and_basename(uri, parent, name):
    assert (storage.parent(uri), storage.basename(uri)) == (parent, name)


def test_resolve_reads_list_entries_against_their_folder(tmp_path):
    assert storage.resolve(str(tmp_path), "a/b.wav") == str(tmp_path / "a" / "b.wav")
    assert storage.resolve(str(tmp_path / "x"), "../b.wav") == str(tmp_path / "b.wav")
    assert storage.resolve(str(tmp_path), "/abs/b.wav") == "/abs/b.wav"
    assert storage.resolve(str(tmp_path), "s3://bucket/b.wav") == "s3://bucket/b.wav"
    assert storage.resolve("s3://bucket/lists", "a/b.wav") == "s3://bucket/lists/a/b.wav"
    with pytest.raises(ValueError, match="unsafe"):
        storage.resolve("s3://bucket/lists", "../b.wav")
