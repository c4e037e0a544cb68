"""URIs as MusiCoder uses them: plain paths, ``file://`` paths and ``s3://bucket/prefix``.

The scheme comes from :func:`urllib.parse.urlsplit`, accepted only when ``://`` follows it, so
that a local name holding a colon (``take:2.wav``) stays a path. ``file://`` paths are taken
verbatim (no percent-decoding, no query or fragment), so names round-trip through listing and
:func:`join`. :func:`parent` and :func:`basename` are the one place where a URI is cut at its
last ``/``; :func:`resolve` reads a path found in a list file against the list's folder.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import urllib.parse

SCHEMES = ("", "file", "s3")
FILE_PREFIX = "file://"


def scheme(uri: str) -> str:
    """The lower-case scheme of ``uri`` (``""`` for a plain path).

    Raises:
        ValueError: for an empty string.
    """
    if not uri:
        raise ValueError("empty path or URI")
    found = urllib.parse.urlsplit(uri).scheme
    return found.lower() if found and uri[len(found) : len(found) + 3] == "://" else ""


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs, False for ``s3://``.

    Raises:
        ValueError: for an empty string or any other scheme.
    """
    found = scheme(uri)
    if found not in SCHEMES:
        raise ValueError(f"{uri}: unsupported URI scheme {found!r} (use a path, file:// or s3://)")
    return found != "s3"


def local_path(uri: str) -> pathlib.Path:
    """The filesystem path of a plain path or ``file://`` URI (``file://localhost/`` accepted).

    Raises:
        ValueError: for ``s3://`` URIs and relative ``file://`` URIs.
    """
    if not is_local(uri):
        raise ValueError(f"{uri}: not a local path")
    if scheme(uri) != "file":
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
    if scheme(base) == "":
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def resolve(base: str, path: str) -> str:
    """``path`` as a URI: a URI or an absolute path as it is, a relative path joined onto the
    folder or prefix ``base`` (locally normalized, so ``..`` may climb out of it).

    Raises:
        ValueError: a relative path with ``..`` under an ``s3://`` base.
    """
    if scheme(path) or os.path.isabs(path):
        return path
    if is_local(base):
        return os.path.normpath(os.path.join(local_path(base), path))
    return join(base, path)


def parent(uri: str) -> str:
    """The folder or prefix that holds ``uri`` (a trailing ``/`` is ignored): ``"."`` for a bare
    relative name, the bucket root for ``s3://bucket/key``."""
    if scheme(uri) == "":
        return str(pathlib.PurePath(uri).parent)
    head, _, tail = uri.rstrip("/").partition("://")
    folder = posixpath.dirname(tail)
    return f"{head}://{folder or tail}"


def basename(uri: str) -> str:
    """The last component of a path or URI (a trailing ``/`` is ignored)."""
    return posixpath.basename(uri.rstrip("/")) if scheme(uri) else pathlib.PurePath(uri).name
