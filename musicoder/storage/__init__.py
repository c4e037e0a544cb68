"""Storage: one small API over local paths, ``file://`` URIs and ``s3://bucket/prefix``.

Every path argument in MusiCoder goes through this package (STYLE §8). This module only
dispatches on the URI scheme (:mod:`musicoder.storage.uri`, which also owns joining and
cutting URIs): the local backend is :mod:`musicoder.storage.local`, the S3 one (client,
retries, resumable reads, uploads) :mod:`musicoder.storage.s3`; nothing else tests for
``s3://``.

Writes are atomic, so readers never see a partial object under its final name (DESIGN §3): a
local file is written to a temp sibling, fsynced and renamed; an S3 object is one PUT or a
multipart upload that is aborted on failure. Local listing never follows directory symlinks and
reports broken ones with size -1 instead of hiding them, so callers can reject them explicitly.
Errors are ``OSError`` subclasses naming the URI; an S3 endpoint that stays unreachable or
throttling through every retry raises :class:`StorageUnavailableError` (a ``ConnectionError``
naming the endpoint), and :func:`retry_counts` tells how many retries this process made.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from musicoder.storage import local, s3
from musicoder.storage.s3 import StorageUnavailableError, retry_counts
from musicoder.storage.uri import basename, is_local, join, local_path, parent, resolve

__all__ = [
    "ObjectInfo",
    "StorageUnavailableError",
    "basename",
    "delete",
    "exists",
    "is_local",
    "join",
    "list_objects",
    "local_path",
    "open_read",
    "open_write",
    "parent",
    "read_bytes",
    "read_json",
    "read_json_ahead",
    "read_text",
    "real_key",
    "resolve",
    "retry_counts",
    "size",
    "write_bytes",
    "write_file",
    "write_json",
    "write_text",
]

READ_BUFFER_SIZE = 2**20  # bytes buffered over an S3 stream


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object.

    Attributes:
        uri: Full URI (local: the listed URI joined with the relative path).
        size: Size in bytes; -1 when a local entry cannot be stat'ed (dangling/looping symlink).
    """

    uri: str
    size: int


def real_key(uri: str) -> str:
    """Identity for duplicate detection: ``os.path.realpath`` locally, the URI itself on S3."""
    return local.real_key(uri) if is_local(uri) else uri


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[BinaryIO]:
    """Open for streaming binary reading; seekable, so ``soundfile`` and ``tarfile`` can use it.

    Raises:
        FileNotFoundError: the object does not exist (the message names the URI).
        OSError: other failures, including S3 bodies that keep breaking after re-opens.
    """
    if is_local(uri):
        f = local.open_read(uri)
    else:
        f = io.BufferedReader(s3.Reader(uri), buffer_size=READ_BUFFER_SIZE)
    with f:
        yield f


def read_bytes(uri: str) -> bytes:
    """The whole object as bytes."""
    with open_read(uri) as f:
        return f.read()


def read_text(uri: str) -> str:
    """The whole object decoded as UTF-8.

    Raises:
        ValueError: not valid UTF-8 (names the URI and the byte offset).
    """
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{uri}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def read_json(uri: str) -> Any:
    """The object parsed as JSON.

    Raises:
        ValueError: invalid JSON (names the URI, line and column).
    """
    try:
        return json.loads(read_text(uri))
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri}: invalid JSON ({e.msg} at line {e.lineno} col {e.colno})") from e


def read_json_ahead(uris: Iterable[str], *, threads: int = 16) -> Iterator[tuple[str, Any]]:
    """`(uri, read_json(uri))` in the order of `uris`, read by `threads` threads at most
    `2 * threads` objects ahead of the consumer: an S3 GET's latency overlaps the caller's work
    on earlier objects, and memory holds a bounded window, not every object. An error is
    raised when its object's turn comes (the objects before it are yielded first).
    """
    pending: collections.deque = collections.deque()
    todo = iter(uris)
    with ThreadPoolExecutor(threads) as pool:
        try:
            for uri in todo:
                pending.append((uri, pool.submit(read_json, uri)))
                if len(pending) >= 2 * threads:
                    uri, future = pending.popleft()
                    yield uri, future.result()
            while pending:
                uri, future = pending.popleft()
                yield uri, future.result()
        finally:  # an early exit (error, break) leaves queued reads unstarted
            for _, future in pending:
                future.cancel()


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[BinaryIO]:
    """Open for binary writing; the object appears only after the block exits cleanly.

    Local: see :func:`musicoder.storage.local.open_write`. S3: spooled to a local temp file,
    then uploaded (multipart when large). An exception in the block discards everything and
    leaves no temp file behind.
    """
    if is_local(uri):
        with local.open_write(uri) as f:
            yield f
        return
    s3.split(uri)
    try:
        fd, tmp = tempfile.mkstemp(prefix="musicoder-upload-", suffix=".tmp")
    except OSError as e:
        raise local.renamed(e, uri) from e
    try:
        with open(fd, "w+b") as f:
            yield f
            f.flush()
            f.seek(0)
            s3.upload(uri, f, os.fstat(f.fileno()).st_size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` atomically."""
    if is_local(uri):
        with local.open_write(uri) as f:
            f.write(data)
    else:
        s3.upload(uri, io.BytesIO(data), len(data))


def write_text(uri: str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys, trailing newline), atomically."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_file(uri: str, path: str | os.PathLike) -> None:
    """Copy the local file ``path`` to ``uri`` atomically (S3: multipart when large).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    with open(path, "rb") as src:
        if is_local(uri):
            local.copy_from(uri, src)
        else:
            s3.upload(uri, src, os.fstat(src.fileno()).st_size)


def exists(uri: str) -> bool:
    """True if the object (or local path) exists; a dangling symlink does not."""
    if is_local(uri):
        return local.exists(uri)
    try:
        s3.size(uri)
    except FileNotFoundError:
        return False
    return True


def size(uri: str) -> int:
    """Size in bytes.

    Raises:
        FileNotFoundError: the object does not exist.
    """
    return local.size(uri) if is_local(uri) else s3.size(uri)


def delete(uri: str) -> None:
    """Delete one object or file; a missing one is fine."""
    return local.delete(uri) if is_local(uri) else s3.delete(uri)


def _extension_matcher(extensions: Iterable[str] | None) -> Callable[[str], bool]:
    if extensions is None:
        return lambda uri: True
    suffixes = tuple(
        "." + e.lower().lstrip(".")
        for e in ([extensions] if isinstance(extensions, str) else extensions)
    )
    return lambda uri: basename(uri).lower().endswith(suffixes)


def list_objects(
    uri: str, *, extensions: Iterable[str] | None = None, recursive: bool = True
) -> Iterator[ObjectInfo]:
    """Stream the objects under a directory or prefix.

    Args:
        uri: A local directory, ``file://`` directory or ``s3://bucket/prefix`` (a prefix is a
            folder: ``s3://b/data`` lists ``data/...``, not ``database/...``).
        extensions: Keep only names ending in one of these (``".wav"`` or ``"wav"``,
            case-insensitive, ``"tar.gz"`` works); None keeps everything.
        recursive: Descend into sub-directories (S3: across ``/``).

    Returns:
        A generator of :class:`ObjectInfo`: sorted by name within each local directory, in key
        order on S3 (paginated). Local directory symlinks are never followed; file symlinks are
        yielded, broken or looping ones with ``size == -1`` so that callers can reject them.

    Raises:
        FileNotFoundError: the local directory does not exist (raised on first iteration).
        NotADirectoryError: the local path is a file (raised on first iteration).
    """
    match = _extension_matcher(extensions)
    backend = local if is_local(uri) else s3
    found = backend.iter_objects(uri, recursive)
    return (ObjectInfo(u, n) for u, n in found if match(u))
