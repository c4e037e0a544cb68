"""Input listing for the sharder: folders, ``s3://`` prefixes, single files and URI lists.

Every input kind becomes a stream of ``(uri, size)`` pairs, with size -1 for an entry that
cannot be stat'ed (missing, dangling or looping symlink) so the planner can reject it rather
than fail. Local URIs are made absolute: sample keys hash the URI, and Ray workers may run in
another working directory.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import pathlib
from collections.abc import Iterator
from urllib.parse import urlparse

from musicoder import storage
from musicoder.audio import AUDIO_EXTENSIONS

LIST_SUFFIXES = (".txt", ".csv")
URI_COLUMNS = ("uri", "path")
SIZE_COLUMN = "size"


def normalize_uri(uri: str) -> str:
    """Local paths become absolute plain paths (``~`` expanded); other URIs are kept as given."""
    if not storage.is_local(uri):
        return uri
    return os.path.abspath(os.path.expanduser(str(storage.local_path(uri))))


def iter_input(spec: str) -> Iterator[tuple[str, int]]:
    """Yield ``(uri, size)`` for every file of one input; size -1 = cannot be stat'ed.

    Args:
        spec: a folder or ``s3://`` prefix (listed recursively for audio extensions, directory
            symlinks not followed), one audio file, or a ``.txt``/``.csv`` list of URIs (relative
            entries resolve against the list's folder; a CSV uses its ``uri`` or ``path`` column,
            else the first, and an optional ``size`` column saves a stat per entry).

    Raises:
        FileNotFoundError: the input itself does not exist.
        ValueError: the input is a local file of neither an audio nor a list extension.
    """
    uri = normalize_uri(spec)
    ext = suffix(uri)
    if ext in LIST_SUFFIXES:
        yield from _iter_list(uri)
    elif ext in AUDIO_EXTENSIONS and not (storage.is_local(uri) and os.path.isdir(uri)):
        size = _stat(uri)
        if size < 0 and not storage.is_local(uri):
            raise FileNotFoundError(f"{spec}: input not found")
        yield uri, size
    elif storage.is_local(uri) and os.path.isfile(uri):  # else listing it says "Not a directory"
        raise ValueError(
            f"{spec}: not a folder, a list ({', '.join(LIST_SUFFIXES)}) or an audio file "
            f"({', '.join(AUDIO_EXTENSIONS)})"
        )
    else:
        for info in storage.list_objects(uri, extensions=AUDIO_EXTENSIONS, recursive=True):
            yield info.uri, info.size


def _iter_list(list_uri: str) -> Iterator[tuple[str, int]]:
    base = storage.parent(list_uri)
    with storage.open_read(list_uri) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        rows: Iterator[list[str]]
        if suffix(list_uri) == ".csv":
            rows = csv.reader(text)
            first = next(rows, [])
            header = [h.strip().lower() for h in first]
            col = next((header.index(c) for c in URI_COLUMNS if c in header), None)
            size_col = header.index(SIZE_COLUMN) if SIZE_COLUMN in header else None
            if col is None:  # no header: the first row is data
                rows, col = itertools.chain([first], rows), 0
        else:
            rows = (
                [line.strip()]
                for line in text
                if line.strip() and not line.lstrip().startswith("#")
            )
            col, size_col = 0, None
        for row in rows:
            entry = row[col].strip() if len(row) > col else ""
            if not entry:
                continue
            uri = normalize_uri(entry if _is_absolute(entry) else _resolve(base, entry))
            given = row[size_col].strip() if size_col is not None and len(row) > size_col else ""
            yield uri, int(given) if given.isdigit() else _stat(uri)


def _resolve(base: str, entry: str) -> str:
    """A list entry relative to the list's folder: local lists may use '..', S3 lists may not."""
    if storage.is_local(base):
        return os.path.normpath(os.path.join(base, entry))
    return storage.join(base, entry)


def _is_absolute(entry: str) -> bool:
    return bool(urlparse(entry).scheme) or os.path.isabs(os.path.expanduser(entry))


def _stat(uri: str) -> int:
    try:
        return storage.size(uri)
    except OSError:  # missing or unreadable: a plan-time reject, not a failed job
        return -1


def suffix(uri: str) -> str:
    """Lower-case extension of a path or URI (``.wav``)."""
    return pathlib.PurePosixPath(urlparse(uri).path if "://" in uri else uri).suffix.lower()
