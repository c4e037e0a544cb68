"""The one tar reader of shard format v1 (DESIGN §5), used by the training loader and by
`downstream/embed.py`; samples are decoded and checked by `musicoder.shardset.sample`.

Why not webdataset's tar iterator: it reads through `tarfile`'s stream mode, which joins and
re-slices its buffers for every member; on a 30 s sample (420 kB of float16 features) that costs
more than all of the decoding. `iter_samples` reads the tar strictly sequentially (so an S3
stream is never re-opened by a seek), parses each 512-byte header (plain ustar regular-file
headers directly, everything else with `tarfile.TarInfo.frombuf`; checksums verified, GNU long
names and pax `path`/`size` records applied), reads each payload with `readinto` into a
writable `bytearray` (recycled through a `BufferPool` by the loader), and groups members by key
as webdataset does (`<key>.<suffix>`, the key ending at the first dot of the base name).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from musicoder.shardset.format import ShardFormatError

log = logging.getLogger(__name__)

BLOCK = 512  # tar block size
USTAR_MAGIC = b"ustar\x0000"  # POSIX ustar magic + version, as Python's tarfile writes it
MAX_MEMBER_BYTES = 1 << 30  # a larger size field is corrupt or hostile: refused before allocation


def _read_into(f: BinaryIO, buffer: bytearray | memoryview) -> int:
    """Fill `buffer` from `f` (which may return short reads); return the bytes read (< len at EOF)."""
    view, got = memoryview(buffer), 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax extended-header records `"<len> <key>=<value>\\n"`."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        end = pos + int(data[pos:space])
        key, _, value = bytes(data[space + 1 : end - 1]).partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _octal(field: bytes | bytearray) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def parse_header(header: bytes | bytearray) -> tuple[str, int, bytes]:
    """`(name, size, type)` of a 512-byte tar header.

    A POSIX ustar header of a regular file with an octal size and the right checksum (what
    shard writers produce) is parsed here, ~4x faster than `tarfile.TarInfo.frombuf`, reading
    only name, prefix, size and type (mode, owner and times are not validated: nothing uses
    them); every other header (GNU, pax, links, base-256 sizes, bad checksums, the zero end
    block) goes to `frombuf`, which also raises its errors.

    Raises:
        tarfile.TarError: see `tarfile.TarInfo.frombuf` (`EOFHeaderError` at a zero block).
    """
    if header[257:265] == USTAR_MAGIC and header[156:157] == tarfile.REGTYPE and header[124] < 0x80:
        try:
            checksum, size = _octal(header[148:156]), _octal(header[124:136])
        except ValueError:
            checksum = size = -1
        if checksum == sum(header) - sum(header[148:156]) + 256:  # chksum field read as spaces
            name, prefix = header[:100].split(b"\0", 1)[0], header[345:500].split(b"\0", 1)[0]
            name = prefix + b"/" + name if prefix else name
            return name.decode("utf-8", "surrogateescape"), size, tarfile.REGTYPE
    info = tarfile.TarInfo.frombuf(bytes(header), "utf-8", "surrogateescape")
    return info.name, info.size, info.type


def iter_members(
    f: BinaryIO, alloc: Callable[[int], bytearray] = bytearray
) -> Iterator[tuple[str, bytearray]]:
    """`(name, payload)` of every regular file in a tar stream, in order; each payload is read
    into `alloc(size)` (a new zeroed `bytearray`, or a recycled one from a `BufferPool`).

    Raises:
        tarfile.TarError: bad header checksum, truncated header or payload, or a member size
            over `MAX_MEMBER_BYTES`.
    """
    header, pad = bytearray(BLOCK), bytearray(BLOCK)
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        got = _read_into(f, header)
        if got == 0:
            return
        if got < BLOCK:
            raise tarfile.ReadError("truncated tar header")
        try:
            name, size, kind = parse_header(header)
        except tarfile.EOFHeaderError:  # a zero block: end of archive
            return
        size = int(pax.pop("size", size))
        if not 0 <= size <= MAX_MEMBER_BYTES:
            raise tarfile.ReadError(f"{name}: member size {size} outside 0..{MAX_MEMBER_BYTES}")
        data, skip = alloc(size), -size % BLOCK  # payloads are padded to whole blocks
        if _read_into(f, data) < size or _read_into(f, memoryview(pad)[:skip]) < skip:
            raise tarfile.ReadError(f"{name}: truncated tar member")
        if kind == tarfile.XHDTYPE:
            pax = _pax_records(data)
        elif kind == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind != tarfile.XGLTYPE:
            name = pax.pop("path", None) or long_name or name
            pax, long_name = {}, None
            if kind in tarfile.REGULAR_TYPES:
                yield name, data


def iter_samples(
    f: BinaryIO, uri: str, alloc: Callable[[int], bytearray] = bytearray
) -> Iterator[dict[str, bytearray | str]]:
    """Group consecutive members by key: `{"__key__": key, suffix: payload, ...}`; payloads
    come from `alloc` (see `iter_members`).

    Raises:
        ShardFormatError: a key repeats a suffix (a malformed shard).
        tarfile.TarError: see `iter_members`.
    """
    sample: dict[str, bytearray | str] = {}
    for name, data in iter_members(f, alloc):
        base = name.rpartition("/")[2]  # a member name, not a URI
        dot = base.find(".")
        if dot <= 0:
            continue  # not a sample member (no key or no suffix)
        key, suffix = name[: len(name) - len(base) + dot], base[dot + 1 :]
        if sample.get("__key__") != key:
            if sample:
                yield sample
            sample = {"__key__": key}
        if suffix in sample:
            raise ShardFormatError(f"{uri}: member {name} appears twice")
        sample[suffix] = data
    if sample:
        yield sample


class BufferPool:
    """Payload buffers for `iter_members`, recycled once the arrays that view them are dead.

    Why: with fresh buffers, 400 kB payloads held in a shuffle buffer make glibc hand memory
    back to the kernel and fault it in again (~25 page faults per clip, about as long as the
    read itself). The loader gives each clip back once collation has copied it, and the next
    payload of the same size is read into that buffer: no allocation, no zeroing, no faults.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # buffers kept at most
        self._free: dict[int, list[bytearray]] = {}
        self._count = 0

    def take(self, size: int) -> bytearray:
        """A buffer of exactly `size` bytes (recycled when one is free, else new)."""
        free = self._free.get(size)
        if not free:
            return bytearray(size)
        self._count -= 1
        return free.pop()

    def give(self, array: np.ndarray) -> None:
        """Recycle the buffer under `array` (from `decode_features`, or a view of it). The caller
        guarantees that no view of that buffer is read again; other arrays are ignored."""
        base = array
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        if not isinstance(base, bytearray):
            return
        if self._count >= self.limit:  # e.g. sizes that never came back: start over
            self._free.clear()
            self._count = 0
        self._free.setdefault(len(base), []).append(base)
        self._count += 1
