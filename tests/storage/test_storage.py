"""Tests for musicoder.storage: one suite over a local dir, file:// and a loopback S3 server.

S3 cases run against moto's server on 127.0.0.1 (fixtures_s3) and carry ``integration``; the
fault-injection cases put a seeded proxy in front of it that answers 503 and resets connections
at connect and mid-body.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from botocore.exceptions import BotoCoreError
from fixtures_s3 import s3_admin_client

from musicoder import storage
from musicoder.storage import s3

pytestmark = pytest.mark.timeout(120)

MB = 2**20
integration = pytest.mark.integration


@pytest.fixture(params=["local", "file", pytest.param("s3", marks=integration)])
def base(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> str:
    """A fresh, empty storage folder of each kind; S3 upload spools go to tmp_path/spool."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return request.getfixturevalue("s3_env") + "/store"


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ----------------------------------------------------------------------------- round trips


def test_round_trip_bytes_text_json(base):
    uri = storage.join(base, "a/b/blob.bin")
    data = _random_bytes(5000)
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    assert storage.exists(uri) and storage.size(uri) == 5000
    storage.write_bytes(uri, b"")  # overwrite, empty object
    assert storage.read_bytes(uri) == b"" and storage.size(uri) == 0

    storage.write_text(storage.join(base, "t.txt"), "héllo ♫\n")
    assert storage.read_text(storage.join(base, "t.txt")) == "héllo ♫\n"
    obj = {"b": [1, 2.5, None], "a": {"x": "ü"}}
    storage.write_json(storage.join(base, "o.json"), obj)
    assert storage.read_json(storage.join(base, "o.json")) == obj
    assert storage.read_text(storage.join(base, "o.json")).startswith('{\n  "a"')

    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # missing is fine
    storage.write_bytes(storage.join(base, "bad.json"), b"\xff{")
    with pytest.raises(ValueError, match=re.escape(storage.join(base, "bad.json"))):
        storage.read_json(storage.join(base, "bad.json"))


def test_round_trip_file_and_stream(base, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(_random_bytes(300_000, seed=1))
    uri = storage.join(base, "copy.bin")
    storage.write_file(uri, src)
    with storage.open_read(uri) as f:
        assert f.readable()
        head = f.read(1000)
        buf = bytearray(50_000)
        assert f.readinto(buf) == 50_000
        rest = f.read()
        f.seek(-10, io.SEEK_END)
        tail = f.read()
    assert head + bytes(buf) + rest == src.read_bytes() and tail == src.read_bytes()[-10:]

    with storage.open_write(storage.join(base, "stream.bin")) as f:
        for i in range(10):
            f.write(bytes([i]) * 1000)
    assert storage.read_bytes(storage.join(base, "stream.bin")) == b"".join(
        bytes([i]) * 1000 for i in range(10)
    )


def test_tarfile_stream_and_soundfile_read(base):
    tar_uri = storage.join(base, "shard-000000.tar")
    members = {f"{i:03d}.bin": _random_bytes(10_000 + i, seed=i) for i in range(5)}
    with storage.open_write(tar_uri) as f, tarfile.open(fileobj=f, mode="w|") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with storage.open_read(tar_uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar}
    assert got == members

    wave = np.sin(np.linspace(0, 2000, 22050 * 2)).astype(np.float32) * 0.5
    for fmt in ("WAV", "FLAC"):
        buf = io.BytesIO()
        sf.write(buf, wave, 22050, format=fmt, subtype="PCM_16")
        uri = storage.join(base, f"tone.{fmt.lower()}")
        storage.write_bytes(uri, buf.getvalue())
        with storage.open_read(uri) as f:
            decoded, rate = sf.read(f, dtype="float32")
        assert rate == 22050 and decoded.shape == wave.shape
        np.testing.assert_allclose(decoded, wave, atol=1e-4)


def test_large_object_multipart_round_trip(base, s3_server_if_s3):
    data = _random_bytes(21 * MB, seed=7)
    uri = storage.join(base, "big.bin")
    with storage.open_write(uri) as f:
        for start in range(0, len(data), 3 * MB):
            f.write(data[start : start + 3 * MB])
    assert storage.size(uri) == len(data)
    assert storage.read_bytes(uri) == data
    if s3_server_if_s3:  # the ETag of a multipart object ends in -<parts>
        bucket, key = s3.split(uri)
        etag = s3_admin_client(s3_server_if_s3).head_object(Bucket=bucket, Key=key)["ETag"]
        assert etag.strip('"').endswith("-3")


@pytest.fixture
def s3_server_if_s3(base: str, request: pytest.FixtureRequest) -> str | None:
    return None if storage.is_local(base) else request.getfixturevalue("s3_server")


# ----------------------------------------------------------------------------- listing


def test_listing_over_1000_keys(base):
    names = [f"{i:05d}.bin" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:  # also exercises the client cache across threads
        list(
            pool.map(
                lambda i: storage.write_bytes(storage.join(base, names[i]), b"x" * (i % 7)),
                range(len(names)),
            )
        )
    storage.write_bytes(storage.join(base, "sub/deep.bin"), b"abc")
    pages = []

    def count_page(**kwargs):
        pages.append(kwargs)

    if not storage.is_local(base):  # count the ListObjectsV2 pages actually fetched
        s3.client().meta.events.register("after-call.s3.ListObjectsV2", count_page)
    listed = list(storage.list_objects(base, recursive=False))
    if not storage.is_local(base):
        s3.client().meta.events.unregister("after-call.s3.ListObjectsV2", count_page)
        assert len(pages) == 2
    assert [o.uri for o in listed] == [storage.join(base, n) for n in names]
    assert [o.size for o in listed] == [i % 7 for i in range(1100)]
    assert sum(1 for _ in storage.list_objects(base)) == 1101


def test_listing_extensions_prefix_and_order(base):
    for name in ["b.WAV", "a.wav", "c.Flac", "d.mp3", "e.wav.txt", "sub/z/f.Wav", "x.tar.gz"]:
        storage.write_bytes(storage.join(base, name), b"1234")
    storage.write_bytes(base + "2/sibling.wav", b"x")  # shares the prefix, not the folder
    found = [o.uri for o in storage.list_objects(base, extensions=[".wav", "FLAC"])]
    assert found == [storage.join(base, n) for n in ["a.wav", "b.WAV", "c.Flac", "sub/z/f.Wav"]]
    assert [o.uri for o in storage.list_objects(base, extensions="tar.gz")] == [
        storage.join(base, "x.tar.gz")
    ]
    assert list(storage.list_objects(base, extensions=[])) == []
    assert all(o.size == 4 for o in storage.list_objects(base))


def test_local_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.wav").write_bytes(b"12345")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "hidden.wav").write_bytes(b"1")
    (root / "dirlink").symlink_to(tmp_path / "outside")  # not followed
    (root / "loopdir").symlink_to(root)  # would recurse forever if followed
    (root / "filelink.wav").symlink_to(root / "real" / "a.wav")
    (root / "dangling.wav").symlink_to(tmp_path / "missing.wav")
    (root / "loop1.wav").symlink_to(root / "loop2.wav")
    (root / "loop2.wav").symlink_to(root / "loop1.wav")
    os.mkfifo(root / "pipe.wav")  # reading would block: not an object

    got = {os.path.relpath(o.uri, root): o.size for o in storage.list_objects(str(root))}
    assert got == {
        "real/a.wav": 5,
        "filelink.wav": 5,
        "dangling.wav": -1,
        "loop1.wav": -1,
        "loop2.wav": -1,
    }
    assert storage.real_key(str(root / "filelink.wav")) == str((root / "real" / "a.wav").resolve())
    assert not storage.exists(str(root / "dangling.wav"))


def test_local_missing_dir_and_file_not_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        list(storage.list_objects(str(tmp_path / "nope")))
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        list(storage.list_objects(str(tmp_path / "f")))


# ----------------------------------------------------------------------------- errors, atomicity


def test_missing_object_is_file_not_found_naming_uri(base):
    uri = storage.join(base, "no/such.wav")
    for call in (storage.read_bytes, storage.size, storage.read_json):
        with pytest.raises(FileNotFoundError, match=re.escape(uri)):
            call(uri)
    with pytest.raises(FileNotFoundError, match=re.escape(uri)), storage.open_read(uri):
        pass
    assert not storage.exists(uri)
    storage.delete(uri)


def test_read_json_ahead_in_order_within_its_window(base, monkeypatch):
    uris = [storage.join(base, f"index-{i:03d}.json") for i in range(40)]
    for i, uri in enumerate(uris):
        storage.write_json(uri, {"n": i})
    started: list[str] = []
    read_json = storage.read_json

    def recording(uri: str):
        started.append(uri)
        return read_json(uri)

    monkeypatch.setattr(storage, "read_json", recording)
    got = []
    for uri, obj in storage.read_json_ahead(uris, threads=3):
        time.sleep(0.005)  # a slow consumer: idle threads would run ahead without the window
        assert len(started) <= len(got) + 2 * 3
        got.append((uri, obj["n"]))
    assert got == [(uri, i) for i, uri in enumerate(uris)]


def test_read_json_ahead_raises_at_the_missing_objects_turn(base):
    uris = [storage.join(base, name) for name in ("a.json", "missing.json", "c.json")]
    storage.write_json(uris[0], {"n": 0})
    storage.write_json(uris[2], {"n": 2})
    reads = storage.read_json_ahead(uris, threads=2)
    assert next(reads) == (uris[0], {"n": 0})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        next(reads)


@integration
def test_missing_bucket_is_file_not_found(s3_env):
    uri = "s3://no-such-bucket-musicoder/x.wav"
    with pytest.raises(FileNotFoundError, match=re.escape(uri)):
        storage.read_bytes(uri)
    with pytest.raises(FileNotFoundError, match=re.escape("s3://no-such-bucket-musicoder")):
        list(storage.list_objects("s3://no-such-bucket-musicoder"))


def test_failed_write_leaves_nothing(base):
    uri = storage.join(base, "part.bin")
    storage.write_bytes(storage.join(base, "keep.bin"), b"k")
    with pytest.raises(RuntimeError, match="boom"), storage.open_write(uri) as f:
        f.write(b"x" * 100_000)
        raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert [o.uri for o in storage.list_objects(base)] == [storage.join(base, "keep.bin")]
    assert os.listdir(tempfile.gettempdir()) == []  # no spooled upload left
    if storage.is_local(base):
        assert os.listdir(storage.local_path(base)) == ["keep.bin"]  # no temp sibling


def test_local_partial_write_never_visible(tmp_path):
    uri = str(tmp_path / "out" / "shard.tar")
    storage.write_bytes(uri, b"old")
    with storage.open_write(uri) as f:
        f.write(b"new" * 1000)
        f.flush()
        assert storage.read_bytes(uri) == b"old"  # readers still see the previous version
        assert [o.uri for o in storage.list_objects(str(tmp_path / "out"), extensions=["tar"])] == [
            uri
        ]
    assert storage.read_bytes(uri) == b"new" * 1000
    assert os.listdir(tmp_path / "out") == ["shard.tar"]


@integration
def test_failed_multipart_upload_is_aborted(s3_env, s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    uri = storage.join(s3_env, "big.bin")
    local = tmp_path / "big.bin"
    local.write_bytes(_random_bytes(20 * MB))

    def fail_part_2(request, **_):
        if "partNumber=2" in request.url:
            raise BotoCoreError()  # a transport failure botocore gives up on

    client = s3.client()
    client.meta.events.register("before-send.s3.UploadPart", fail_part_2)
    try:
        with pytest.raises(OSError, match=re.escape(uri)):
            storage.write_file(uri, local)
    finally:
        client.meta.events.unregister("before-send.s3.UploadPart", fail_part_2)
    assert not storage.exists(uri)
    bucket, _ = s3.split(uri)
    assert "Uploads" not in s3_admin_client(s3_server).list_multipart_uploads(Bucket=bucket)


def test_client_follows_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    first = s3.client()
    assert s3.client() is first
    assert first.meta.region_name == "eu-west-3"
    assert first.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 3}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:10")
    assert s3.client() is not first and s3.client().meta.endpoint_url == "http://127.0.0.1:10"
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    with pytest.raises(ValueError, match="AWS_RETRY_MODE"):
        s3.client()


def _read_in_child(uri: str) -> bytes:
    return storage.read_bytes(uri)


@integration
def test_forked_worker_gets_its_own_client(s3_env):
    uri = storage.join(s3_env, "x.bin")
    storage.write_bytes(uri, b"payload")
    parent = s3.client()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_read_in_child, (uri,)) == b"payload"
    assert s3.client() is parent


@integration
def test_replaced_object_is_not_mixed_into_a_read(s3_env):
    uri = storage.join(s3_env, "x.bin")
    storage.write_bytes(uri, _random_bytes(3 * MB, seed=1))
    with storage.open_read(uri) as f:
        f.read(10)
        storage.write_bytes(uri, _random_bytes(3 * MB, seed=2))
        f.seek(2 * MB)
        with pytest.raises(OSError, match="PreconditionFailed"):
            f.read(10)


# ----------------------------------------------------------------------------- fault injection


@integration
def test_operations_survive_injected_faults(s3_env, fault_proxy):
    proxy = fault_proxy(
        seed=3, p_503=0.15, p_reset_connect=0.15, p_reset_body=0.1, reset_after=100, max_attempts=10
    )
    payloads = {storage.join(s3_env, f"d/{i}.bin"): _random_bytes(2000, seed=i) for i in range(6)}
    for uri, data in payloads.items():
        storage.write_bytes(uri, data)
    assert [o.uri for o in storage.list_objects(storage.join(s3_env, "d"))] == sorted(payloads)
    for uri, data in payloads.items():
        assert storage.read_bytes(uri) == data
    assert storage.size(next(iter(payloads))) == 2000
    storage.write_json(storage.join(s3_env, "m.json"), {"k": 1})
    assert storage.read_json(storage.join(s3_env, "m.json")) == {"k": 1}
    assert all(proxy.counts[fate] > 0 for fate in ("503", "reset_connect", "reset_body")), (
        proxy.counts
    )


@integration
def test_streaming_read_resumes_after_mid_body_resets(s3_env, fault_proxy):
    data = _random_bytes(4 * MB, seed=5)
    uri = storage.join(s3_env, "long.flac")
    storage.write_bytes(uri, data)
    proxy = fault_proxy(p_reset_body=1.0, reset_after=300 * 1024)  # every response breaks
    with storage.open_read(uri) as f:
        got = b"".join(iter(lambda: f.read(100_000), b""))
    assert got == data
    assert proxy.counts["reset_body"] >= 10


@integration
def test_read_gives_up_after_bounded_reopens(s3_env, fault_proxy, monkeypatch):
    uri = storage.join(s3_env, "x.bin")
    storage.write_bytes(uri, _random_bytes(MB))
    monkeypatch.setattr(s3, "READ_BACKOFF_S", 0.01)
    fault_proxy(p_reset_body=1.0, reset_after=0, max_attempts=2)  # headers, then reset
    with pytest.raises(OSError, match=re.escape(uri)):
        storage.read_bytes(uri)


@integration
def test_clear_error_when_server_is_gone(s3_env, fault_proxy):
    uri = storage.join(s3_env, "x.bin")
    data = _random_bytes(2 * MB)
    storage.write_bytes(uri, data)
    proxy = fault_proxy(p_reset_body=1.0, reset_after=MB, max_attempts=2)
    with storage.open_read(uri) as f:
        assert f.read(100_000) == data[:100_000]
        proxy.stop()  # mid-read: the Range re-open cannot connect
        with pytest.raises(OSError, match=re.escape(uri)) as err:
            f.read()
    assert not isinstance(err.value, FileNotFoundError)
    for call in (
        storage.read_bytes,
        lambda u: storage.write_bytes(u, b"x"),
        storage.size,
        lambda u: list(storage.list_objects(u)),
    ):
        with pytest.raises(OSError, match=re.escape(uri)):
            call(uri)
