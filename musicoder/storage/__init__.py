"""Storage: one small API over local paths, ``file://`` URIs and ``s3://bucket/prefix``.

Every path argument in MusiCoder goes through this package (STYLE §8): it dispatches on the URI
scheme, so nothing else tests for ``s3://``. The S3 side (client, retries, resumable reads,
uploads) lives in :mod:`musicoder.storage.s3`.

Writes are atomic, so readers never see a partial object under its final name (DESIGN §3): a
local file is written to a temp sibling, fsynced and renamed; an S3 object is one PUT or a
multipart upload that is aborted on failure. Local listing never follows directory symlinks and
reports broken ones with size -1 instead of hiding them, so callers can reject them explicitly.
``file://`` paths are taken verbatim (no percent-decoding), so names round-trip through
:func:`list_objects` and :func:`join`. Errors are ``OSError`` subclasses naming the URI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from musicoder.storage import s3

__all__ = [
    "ObjectInfo",
    "join",
    "is_local",
    "local_path",
    "list_objects",
    "open_read",
    "read_bytes",
    "read_text",
    "read_json",
    "open_write",
    "write_bytes",
    "write_text",
    "write_json",
    "write_file",
    "exists",
    "size",
    "delete",
    "real_key",
]

FILE_PREFIX = "file://"
READ_BUFFER_SIZE = 2**20  # bytes buffered over an S3 stream
COPY_BUFFER_SIZE = 2**20
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object.

    Attributes:
        uri: Full URI (local: the listed URI joined with the relative path).
        size: Size in bytes; -1 when a local entry cannot be stat'ed (dangling/looping symlink).
    """

    uri: str
    size: int


def _scheme(uri: str) -> str:
    if not uri:
        raise ValueError("empty path or URI")
    m = _SCHEME_RE.match(uri)
    return m.group(1).lower() if m else ""


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs, False for ``s3://``.

    Raises:
        ValueError: for an empty string or any other scheme.
    """
    scheme = _scheme(uri)
    if scheme not in ("", "file", "s3"):
        raise ValueError(f"{uri}: unsupported URI scheme {scheme!r} (use a path, file:// or s3://)")
    return scheme != "s3"


def local_path(uri: str) -> pathlib.Path:
    """The filesystem path of a plain path or ``file://`` URI (``file://localhost/`` accepted).

    Raises:
        ValueError: for ``s3://`` URIs and relative ``file://`` URIs.
    """
    if not is_local(uri):
        raise ValueError(f"{uri}: not a local path")
    if _scheme(uri) != "file":
        return pathlib.Path(uri)
    path = uri[len(FILE_PREFIX) :]
    if path.startswith("localhost/"):
        path = path[len("localhost") :]
    if not path.startswith("/"):
        raise ValueError(f"{uri}: a file:// URI must hold an absolute path")
    return pathlib.Path(path)


def join(base: str, *parts: str) -> str:
    """Join relative parts onto a path or URI.

    Raises:
        ValueError: if a part is absolute or has a ``..`` segment (path traversal).
    """
    for part in parts:
        if part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"{part}: unsafe path part to join onto {base} (absolute or '..')")
    parts = tuple(p for p in parts if p)
    if _scheme(base) == "":
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def real_key(uri: str) -> str:
    """Identity for duplicate detection: ``os.path.realpath`` locally, the URI itself on S3."""
    return os.path.realpath(local_path(uri)) if is_local(uri) else uri


def _renamed(e: OSError, uri: str) -> OSError:
    """The same kind of OSError, naming the URI instead of an internal path."""
    if e.errno is None:
        return type(e)(f"{uri}: {e}")
    return type(e)(e.errno, e.strerror, uri)


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[BinaryIO]:
    """Open for streaming binary reading; seekable, so ``soundfile`` and ``tarfile`` can use it.

    Raises:
        FileNotFoundError: the object does not exist (the message names the URI).
        OSError: other failures, including S3 bodies that keep breaking after re-opens.
    """
    if is_local(uri):
        try:
            f: BinaryIO = open(local_path(uri), "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise _renamed(e, uri) from e
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


def _fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[BinaryIO]:
    """Open for binary writing; the object appears only after the block exits cleanly.

    Local: a hidden temp sibling (``.<name>.<random>.tmp``), fsynced and renamed over the final
    name. S3: spooled to a local temp file, then uploaded (multipart when large). An exception
    in the block discards everything and leaves no temp file behind.
    """
    local = is_local(uri)
    try:
        if local:
            final = local_path(uri)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = str(final.with_name(f".{final.name[:200]}.{uuid.uuid4().hex[:12]}.tmp"))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        else:
            s3.split(uri)
            fd, tmp = tempfile.mkstemp(prefix="musicoder-upload-", suffix=".tmp")
    except OSError as e:
        raise _renamed(e, uri) from e
    try:
        with open(fd, "wb") as f:
            yield f
        try:  # commit; exceptions of the caller's block never get here
            if local:
                _fsync_path(tmp)
                os.replace(tmp, final)
                _fsync_path(final.parent)
            else:
                with open(tmp, "rb") as f:
                    s3.upload(uri, f, os.fstat(f.fileno()).st_size)
        except OSError as e:
            raise _renamed(e, uri) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` atomically."""
    if is_local(uri):
        with open_write(uri) as f:
            f.write(data)
    else:
        s3.upload(uri, io.BytesIO(data), len(data))


def write_text(uri: str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys, trailing newline), atomically."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_file(uri: str, local: str | os.PathLike) -> None:
    """Copy the local file ``local`` to ``uri`` atomically (S3: multipart when large).

    Raises:
        FileNotFoundError: ``local`` does not exist.
    """
    with open(local, "rb") as src:
        if is_local(uri):
            with open_write(uri) as dst:
                shutil.copyfileobj(src, dst, COPY_BUFFER_SIZE)
        else:
            s3.upload(uri, src, os.fstat(src.fileno()).st_size)


def exists(uri: str) -> bool:
    """True if the object (or local path) exists; a dangling symlink does not."""
    if is_local(uri):
        return local_path(uri).exists()
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
    if not is_local(uri):
        return s3.size(uri)
    try:
        return local_path(uri).stat().st_size
    except OSError as e:
        raise _renamed(e, uri) from e


def delete(uri: str) -> None:
    """Delete one object or file; a missing one is fine."""
    if not is_local(uri):
        return s3.delete(uri)
    try:
        local_path(uri).unlink(missing_ok=True)
    except OSError as e:
        raise _renamed(e, uri) from e


def _walk_local(uri: str, directory: str, rel: str, recursive: bool) -> Iterator[ObjectInfo]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise _renamed(e, join(uri, rel) if rel else uri) from e
    for entry in entries:
        sub = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from _walk_local(uri, entry.path, sub, recursive)
            continue
        try:
            st = entry.stat()  # follows symlinks
        except OSError:  # dangling or looping symlink, or vanished: callers reject size -1
            yield ObjectInfo(join(uri, sub), -1)
            continue
        if stat.S_ISREG(st.st_mode):
            yield ObjectInfo(join(uri, sub), st.st_size)
        # Else a symlinked directory (never followed) or a FIFO/socket/device, whose reading
        # could block forever: not an object.


def _extension_matcher(extensions: Iterable[str] | None) -> Callable[[str], bool]:
    if extensions is None:
        return lambda uri: True
    suffixes = tuple(
        "." + e.lower().lstrip(".")
        for e in ([extensions] if isinstance(extensions, str) else extensions)
    )
    return lambda uri: uri.rsplit("/", 1)[-1].lower().endswith(suffixes)


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
    if is_local(uri):
        found = _walk_local(uri, str(local_path(uri)), "", recursive)
    else:
        found = (ObjectInfo(u, n) for u, n in s3.iter_objects(uri, recursive))
    return (info for info in found if match(info.uri))
