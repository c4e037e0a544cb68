"""The one tar writer of shard format v1: deterministic WebDataset tars (DESIGN §5, STYLE 10).

The same members added in the same order give byte-identical tars: every header has
``mtime=0``, uid/gid 0, a fixed uname/gname and mode, and the USTAR format (no PAX records whose
content could vary). WebDataset groups members into samples by the key before the first dot, so
members of one sample must be added consecutively; the writer keeps the caller's order.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Self

TAR_UNAME = TAR_GNAME = "musicoder"
TAR_MODE = 0o644


@dataclass(frozen=True)
class TarSummary:
    """A finished tar: where it is, its size and sha256, and how many members it holds."""

    path: str
    bytes: int
    sha256: str
    members: int


class ShardTarWriter:
    """Context manager writing one tar file with fixed headers; ``close()`` returns its summary.

    Example:
        >>> with ShardTarWriter("/tmp/shard-000000.tar") as w:
        ...     w.add("abc_00000.json", b"{}")
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._file = _HashingWriter(self.path)
        self._tar: tarfile.TarFile | None = tarfile.open(  # noqa: SIM115 (closed by close())
            fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT
        )
        self._members = 0
        self.summary: TarSummary | None = None

    def add(self, name: str, data: bytes | BinaryIO, size: int | None = None) -> None:
        """Append one member.

        Args:
            name: member name, e.g. ``"<key>.feat.npy"``.
            data: the payload, or a file object positioned at its start.
            size: bytes to copy from ``data`` when it is a file object (required then).

        Raises:
            ValueError: the writer is closed, or ``size`` is missing for a file object.
        """
        if self._tar is None:
            raise ValueError(f"{self.path}: tar writer is closed")
        if isinstance(data, (bytes, bytearray, memoryview)):
            size, data = len(data), io.BytesIO(data)
        elif size is None:
            raise ValueError(f"{self.path}: member {name}: size is required for a file object")
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, TAR_MODE
        info.uid = info.gid = 0
        info.uname, info.gname = TAR_UNAME, TAR_GNAME
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, data)
        self._members += 1

    def close(self) -> TarSummary:
        """Finish the archive and return its summary (idempotent)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            self._file.close()
            self.summary = TarSummary(
                self.path, self._file.tell(), self._file.digest.hexdigest(), self._members
            )
        assert self.summary is not None
        return self.summary

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # an error: leave no half-written archive behind
            self._tar.close()
            self._tar = None
            self._file.close()
            os.unlink(self.path)


class _HashingWriter:
    """Write-only file that hashes what it writes (saves reading the tar back for its sha256)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.digest = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self._size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        self._f.close()
