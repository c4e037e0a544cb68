"""Local backend of :mod:`musicoder.storage`: plain paths and ``file://`` URIs.

Writes are atomic (DESIGN §3): a hidden temp sibling (``.<name>.<random>.tmp``) is written,
fsynced and renamed over the final name, then the folder is fsynced. Listing never follows
directory symlinks and reports broken or looping file symlinks with size -1 instead of hiding
them, so callers can reject them explicitly; FIFOs, sockets and devices (whose reading could
block forever) are not objects. Errors are ``OSError`` subclasses naming the URI, not an
internal temp path. Call through :mod:`musicoder.storage`, not directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from musicoder.storage.uri import join, local_path

COPY_BUFFER_SIZE = 2**20


def renamed(e: OSError, uri: str) -> OSError:
    """The same kind of OSError, naming the URI instead of an internal path."""
    if e.errno is None:
        return type(e)(f"{uri}: {e}")
    return type(e)(e.errno, e.strerror, uri)


def open_read(uri: str) -> BinaryIO:
    """The file opened for binary reading.

    Raises:
        FileNotFoundError: naming the URI (other OSErrors likewise).
    """
    try:
        return open(local_path(uri), "rb")  # noqa: SIM115 (the caller closes it)
    except OSError as e:
        raise renamed(e, uri) from e


def _fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[BinaryIO]:
    """A temp sibling opened for writing, fsynced and renamed over ``uri`` when the block exits
    cleanly; an exception in the block leaves neither the object nor a temp file."""
    final = local_path(uri)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(final.with_name(f".{final.name[:200]}.{uuid.uuid4().hex[:12]}.tmp"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    except OSError as e:
        raise renamed(e, uri) from e
    try:
        with open(fd, "wb") as f:
            yield f
        try:  # commit; exceptions of the caller's block never get here
            _fsync_path(tmp)
            os.replace(tmp, final)
            _fsync_path(final.parent)
        except OSError as e:
            raise renamed(e, uri) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def copy_from(uri: str, src: BinaryIO) -> None:
    """Write everything left in ``src`` to ``uri``, atomically."""
    with open_write(uri) as dst:
        shutil.copyfileobj(src, dst, COPY_BUFFER_SIZE)


def exists(uri: str) -> bool:
    """True if the path exists; a dangling symlink does not."""
    return local_path(uri).exists()


def size(uri: str) -> int:
    """Size in bytes.

    Raises:
        FileNotFoundError: naming the URI.
    """
    try:
        return local_path(uri).stat().st_size
    except OSError as e:
        raise renamed(e, uri) from e


def delete(uri: str) -> None:
    """Delete one file; a missing one is fine."""
    try:
        local_path(uri).unlink(missing_ok=True)
    except OSError as e:
        raise renamed(e, uri) from e


def real_key(uri: str) -> str:
    """``os.path.realpath``: one identity for every name of a file (duplicate detection)."""
    return os.path.realpath(local_path(uri))


def iter_objects(uri: str, recursive: bool) -> Iterator[tuple[str, int]]:
    """``(uri, size)`` of the files under a folder, sorted by name within each folder.

    Raises:
        FileNotFoundError, NotADirectoryError: on first iteration, naming the URI.
    """
    return _walk(uri, str(local_path(uri)), "", recursive)


def _walk(uri: str, directory: str, rel: str, recursive: bool) -> Iterator[tuple[str, int]]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise renamed(e, join(uri, rel) if rel else uri) from e
    for entry in entries:
        sub = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from _walk(uri, entry.path, sub, recursive)
            continue
        try:
            st = entry.stat()  # follows symlinks
        except OSError:  # dangling or looping symlink, or vanished: callers reject size -1
            yield join(uri, sub), -1
            continue
        if stat.S_ISREG(st.st_mode):
            yield join(uri, sub), st.st_size
        # Else a symlinked directory (never followed) or a FIFO/socket/device: not an object.
