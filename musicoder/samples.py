"""Reading shard samples (shard format v1, DESIGN §5) fast and without pickle, for the loader.

Why not webdataset's tar iterator: it reads through `tarfile`'s stream mode, which joins and
re-slices its buffers for every member; on a 30 s sample (420 kB of float16 features) that costs
more than all of the decoding. `iter_samples` reads the tar strictly sequentially (so an S3
stream is never re-opened by a seek), parses each 512-byte header with `tarfile.TarInfo.frombuf`
(checksum, ustar fields; GNU long names and pax `path`/`size` records are applied), reads each
payload with `readinto` into its own writable `bytearray`, and groups members by key as
webdataset does (`<key>.<suffix>`, the key ending at the first dot of the base name).

`decode_features` parses the npy header with numpy's own safe header parser (object dtypes are
refused, as `np.load(allow_pickle=False)` would) and wraps the payload with `np.frombuffer`: no
copy. The finite check tests exponent bits, ~10x faster than `np.isfinite` on float16.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

log = logging.getLogger(__name__)

BLOCK = 512  # tar block size
FEATURE_SUFFIX = "feat.npy"
META_SUFFIX = "json"
NPY_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
EXPONENT_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
}  # all ones = inf or nan


class ShardFormatError(ValueError):
    """A shard or sample does not follow shard format v1."""


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


def iter_members(f: BinaryIO) -> Iterator[tuple[str, bytearray]]:
    """`(name, payload)` of every regular file in a tar stream, in order.

    Raises:
        tarfile.TarError: bad header checksum, truncated header or payload.
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
            info = tarfile.TarInfo.frombuf(bytes(header), "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:  # a zero block: end of archive
            return
        size = int(pax.pop("size", info.size))
        data, skip = bytearray(size), -size % BLOCK  # payloads are padded to whole blocks
        if _read_into(f, data) < size or _read_into(f, memoryview(pad)[:skip]) < skip:
            raise tarfile.ReadError(f"{info.name}: truncated tar member")
        if info.type == tarfile.XHDTYPE:
            pax = _pax_records(data)
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type != tarfile.XGLTYPE:
            name = pax.pop("path", None) or long_name or info.name
            pax, long_name = {}, None
            if info.type in tarfile.REGULAR_TYPES:
                yield name, data


def iter_samples(f: BinaryIO, uri: str) -> Iterator[dict[str, bytearray | str]]:
    """Group consecutive members by key: `{"__key__": key, suffix: payload, ...}`.

    Raises:
        ShardFormatError: a key repeats a suffix (a malformed shard).
        tarfile.TarError: see `iter_members`.
    """
    sample: dict[str, bytearray | str] = {}
    for name, data in iter_members(f):
        base = name.rsplit("/", 1)[-1]
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


@functools.lru_cache(maxsize=256)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse an npy header (magic .. end of header dict); cached: most clips share a shape."""
    fp = io.BytesIO(prefix)
    version = npy_format.read_magic(fp)
    if version not in NPY_READERS:
        raise ValueError(f"unsupported npy version {version}")
    shape, fortran, dtype = NPY_READERS[version](fp)
    if dtype.hasobject:
        raise ValueError("npy with object dtype (pickle) refused")
    return shape, fortran, dtype


def decode_features(data: bytes | bytearray) -> np.ndarray:
    """An npy payload as an array viewing `data` (writable when `data` is a bytearray).

    Raises:
        ValueError: not npy, an unsupported version, an object dtype or a short payload.
    """
    if data[:6] != npy_format.MAGIC_PREFIX or len(data) < 10:
        raise ValueError("not an npy payload")
    wide = data[6] >= 2  # v2/v3 store the header length in 4 bytes, v1 in 2
    end = 12 + int.from_bytes(data[8:12], "little") if wide else 10 + data[8] + 256 * data[9]
    shape, fortran, dtype = _npy_header(bytes(data[:end]))
    count = int(np.prod(shape))
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f"npy payload holds {len(data) - end} bytes, shape {shape} needs more")
    array = np.frombuffer(data, dtype, count, end).reshape(shape, order="F" if fortran else "C")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def all_finite(array: np.ndarray) -> bool:
    """No inf or nan in a float16/float32 array (exponent bits, no float temporaries)."""
    bits, mask = EXPONENT_BITS[array.dtype]
    return not ((array.view(bits) & mask) == mask).any()


def decode_sample(sample: dict, channels: int, preset: str) -> np.ndarray:
    """Decode one sample's features: `(frames, C)` as stored (float16; float32 is accepted),
    converted later, after cropping.

    Raises:
        ShardFormatError: missing members, pickled or malformed npy, wrong preset or shape,
            non-finite values.
    """
    key = sample.get("__key__")
    if FEATURE_SUFFIX not in sample or META_SUFFIX not in sample:
        raise ShardFormatError(f"{key}: needs .{FEATURE_SUFFIX} and .{META_SUFFIX} members")
    try:
        meta = json.loads(sample[META_SUFFIX])
        feats = decode_features(sample[FEATURE_SUFFIX])
    except (ValueError, OSError, EOFError) as exc:
        raise ShardFormatError(f"{key}: undecodable member ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("preset") != preset:
        found = meta.get("preset") if isinstance(meta, dict) else meta
        raise ShardFormatError(f"{key}: preset {found!r}, expected {preset!r}")
    if feats.ndim != 2 or feats.shape[1] != channels or feats.shape[0] < 1:
        raise ShardFormatError(
            f"{key}: features shape {feats.shape}, expected (frames, {channels})"
        )
    if feats.dtype not in EXPONENT_BITS:
        raise ShardFormatError(f"{key}: features dtype {feats.dtype}, expected float16")
    if not all_finite(feats):
        raise ShardFormatError(f"{key}: non-finite feature values")
    return feats
