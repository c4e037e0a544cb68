"""S3 backend of :mod:`musicoder.storage`: client cache, error mapping, resumable reads, uploads.

The client comes from the standard AWS environment (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``,
keys, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``), so MinIO,
Ceph and AWS all work (DESIGN §3). It is created lazily and cached per process id and per those
environment values: Ray workers and data loader workers are forked or spawned children, and
tests point the endpoint somewhere new between cases. Request retries are botocore's
standard/adaptive mode; they stop once response headers have arrived, so :class:`Reader`
re-opens a broken body with a ``Range`` from its current offset. Call through
:mod:`musicoder.storage`, not directly.

Throttling and outages (DESIGN §9): every retry botocore made (``RetryAttempts`` of each call) and
every Range re-open is counted per process (:func:`retry_counts`), for the sharding job's Ray
metrics and the trainer's TensorBoard. An error that is the service's state rather than the
object's (no connection, a timeout, a 5xx or ``SlowDown`` still there after the retries) becomes
:class:`StorageUnavailableError`, a ``ConnectionError`` that names the endpoint: the sharding
worker re-raises it (never a reject) and the driver stops at the first shard that fails with it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
import boto3.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

log = logging.getLogger(__name__)

PREFIX = "s3://"
LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (the S3 maximum)
MULTIPART_THRESHOLD = 8 * 2**20  # bytes; smaller objects are one PUT
MULTIPART_CHUNK_SIZE = 8 * 2**20  # part size (S3 minimum 5 MiB)
TRANSFER_CONCURRENCY = 4  # parallel part uploads per object
MAX_POOL_CONNECTIONS = 16
RETRY_MODES = ("standard", "adaptive")
DEFAULT_RETRY_MODE = "standard"  # AWS_RETRY_MODE may pick "adaptive"
DEFAULT_MAX_ATTEMPTS = 5  # total attempts per request; AWS_MAX_ATTEMPTS overrides
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
READ_REOPEN_ATTEMPTS = 5  # Range re-opens in a row without progress before a read fails
READ_BACKOFF_S = 0.1  # doubled after each re-open in a row
# Bytes per body read: a read that breaks loses its partial chunk, so this bounds the loss.
READ_CHUNK_SIZE = 128 * 1024
# Environment values that shape a client: a change in any of them makes a new client.
CLIENT_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CA_BUNDLE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "Forbidden",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    }
)
# A response body that broke after its headers arrived (botocore does not retry these).
STREAM_ERRORS = (
    ResponseStreamingError,
    IncompleteReadError,
    ReadTimeoutError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
BOTO_ERRORS = (ClientError, BotoCoreError, boto3.exceptions.Boto3Error)
# Errors that say the service, not the object, is the problem (after botocore's retries).
UNAVAILABLE_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ConnectionClosedError,
    ReadTimeoutError,
)
UNAVAILABLE_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "503"}
)


class StorageUnavailableError(ConnectionError):
    """The S3 endpoint cannot be reached or keeps refusing (after retries); names the endpoint."""


_retries = {"requests": 0, "reopens": 0}  # this process's retried requests and Range re-opens


def retry_counts() -> dict[str, int]:
    """Retries of this process so far: ``requests`` (botocore's, one per repeated HTTP
    request: 503 ``SlowDown``, resets, timeouts) and ``reopens`` (bodies re-opened by Range)."""
    return dict(_retries)


def _count_retries(parsed: Any = None, **_: Any) -> None:
    # botocore event "after-call": the final response of a call, after its retries.
    attempts = (parsed or {}).get("ResponseMetadata", {}).get("RetryAttempts", 0)
    if attempts:
        _retries["requests"] += attempts


def _count_failed_retries(exception: Exception | None = None, **_: Any) -> None:
    # botocore event "after-call-error": a call that got no response (no connection) after
    # all its attempts; every attempt after the first was a retry.
    if isinstance(exception, UNAVAILABLE_ERRORS):
        _retries["requests"] += max_attempts() - 1


def max_attempts() -> int:
    """Attempts per request: ``AWS_MAX_ATTEMPTS`` or the default."""
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS))
    if not attempts.isdigit() or int(attempts) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS={attempts!r}: must be a positive integer")
    return int(attempts)


def endpoint() -> str:
    """Where requests go: the configured endpoint URL, or the client's (AWS's regional one)."""
    env = os.environ
    configured = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    return configured or client().meta.endpoint_url


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; ValueError without a bucket."""
    bucket, _, key = uri[len(PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: S3 URI without a bucket")
    return bucket, key


def as_os_error(uri: str, e: Exception) -> OSError:
    """The OSError naming ``uri`` for a boto error: FileNotFoundError for NoSuchKey/404 etc."""
    if isinstance(e, UNAVAILABLE_ERRORS):
        return StorageUnavailableError(
            errno.EHOSTUNREACH,
            f"S3 endpoint {endpoint()} unavailable ({type(e).__name__} after "
            f"{max_attempts()} attempts)",
            uri,
        )
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in UNAVAILABLE_CODES or status >= 500:
            return StorageUnavailableError(
                errno.EAGAIN,
                f"S3 endpoint {endpoint()} unavailable ({code} after {max_attempts()} attempts)",
                uri,
            )
        if code in MISSING_CODES:
            return FileNotFoundError(errno.ENOENT, f"no such S3 object ({code})", uri)
        if code in DENIED_CODES:
            return PermissionError(errno.EACCES, f"S3 access denied ({code})", uri)
        reason = f"S3 error {code}: {err.get('Message', '')}"
    else:
        reason = f"{type(e).__name__}: {e}"
    return OSError(errno.EIO, " ".join(reason.split()), uri)


@contextlib.contextmanager
def errors(uri: str) -> Iterator[None]:
    """Translate boto errors (raised after botocore's own retries) into OSErrors naming ``uri``."""
    try:
        yield
    except BOTO_ERRORS as e:
        raise as_os_error(uri, e) from e


_clients: dict[tuple[int | str | None, ...], Any] = {}
_clients_lock = threading.Lock()


def _forget_clients() -> None:
    # A forked child must not reuse the parent's sockets, nor a lock some parent thread held.
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_clients)


def _make_client() -> Any:
    env = os.environ
    mode = env.get("AWS_RETRY_MODE", DEFAULT_RETRY_MODE)
    if mode not in RETRY_MODES:
        raise ValueError(f"AWS_RETRY_MODE={mode!r}: must be one of {RETRY_MODES}")
    attempts = str(max_attempts())
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    config = Config(
        retries={"mode": mode, "total_max_attempts": int(attempts)},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        # Custom endpoints (MinIO, Ceph) rarely resolve virtual-host bucket names.
        s3={"addressing_style": "path" if url else "auto"},
        # Many S3-compatible servers reject the newer default CRC checksum headers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    log.debug("new S3 client: endpoint=%s retries=%s/%s pid=%d", url, mode, attempts, os.getpid())
    made = boto3.session.Session(region_name=region).client("s3", endpoint_url=url, config=config)
    made.meta.events.register("after-call.s3", _count_retries)
    made.meta.events.register("after-call-error.s3", _count_failed_retries)
    return made


def client() -> Any:
    """The S3 client of this process for the current environment (lazy, thread-safe)."""
    key = (os.getpid(), *(os.environ.get(k) for k in CLIENT_ENV_VARS))
    found = _clients.get(key)
    if found is None:
        with _clients_lock:
            found = _clients.get(key)
            if found is None:
                found = _clients[key] = _make_client()
    return found


def upload(uri: str, fileobj: BinaryIO, nbytes: int) -> None:
    """One PUT below ``MULTIPART_THRESHOLD``, else a multipart upload (aborted on failure)."""
    bucket, key = split(uri)
    with errors(uri):
        if nbytes < MULTIPART_THRESHOLD:
            client().put_object(Bucket=bucket, Key=key, Body=fileobj)
        else:
            config = TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_CHUNK_SIZE,
                max_concurrency=TRANSFER_CONCURRENCY,
            )
            client().upload_fileobj(fileobj, bucket, key, Config=config)


def size(uri: str) -> int:
    """Object size from a HEAD request; FileNotFoundError when missing."""
    bucket, key = split(uri)
    with errors(uri):
        return client().head_object(Bucket=bucket, Key=key)["ContentLength"]


def delete(uri: str) -> None:
    """Delete one object; a missing one is fine."""
    bucket, key = split(uri)
    with contextlib.suppress(FileNotFoundError), errors(uri):
        client().delete_object(Bucket=bucket, Key=key)


def iter_objects(uri: str, recursive: bool) -> Iterator[tuple[str, int]]:
    """``(uri, size)`` of the objects under the folder ``uri``, paginated, in key order."""
    bucket, key = split(uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""  # s3://b/data: not data2/...
    kwargs: dict[str, Any] = {
        "Bucket": bucket,
        "Prefix": prefix,
        "PaginationConfig": {"PageSize": LIST_PAGE_SIZE},
    }
    if not recursive:
        kwargs["Delimiter"] = "/"
    with errors(uri):
        for page in client().get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", ()):
                if not obj["Key"].endswith("/"):  # folder markers
                    yield f"{PREFIX}{bucket}/{obj['Key']}", obj["Size"]


class Reader(io.RawIOBase):
    """Seekable raw stream over one S3 object that survives broken response bodies.

    A body error (reset, timeout, truncation) closes the body; the next read re-opens the
    object with ``Range: bytes=<offset>-`` and ``If-Match: <etag>`` (a replaced object is an
    error, never silently mixed data), at most ``READ_REOPEN_ATTEMPTS`` times in a row without
    progress. Seeking is lazy: the body is only re-opened when a read happens elsewhere.
    Wrap it in ``io.BufferedReader``.

    Raises:
        FileNotFoundError: at construction, when the object does not exist.
    """

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.name = uri
        self._bucket, self._key = split(uri)
        self._pos = 0
        self._body: Any = None
        self._body_pos = -1
        self._etag: str | None = None
        self._size = -1
        self._reopen()  # fail early and learn size + ETag

    def _reopen(self) -> None:
        self._close_body()
        kwargs = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        with errors(self.name):
            resp = client().get_object(Bucket=self._bucket, Key=self._key, **kwargs)
        if self._etag is None:
            self._etag, self._size = resp.get("ETag"), resp["ContentLength"]
        self._body, self._body_pos = resp["Body"], self._pos

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(*STREAM_ERRORS):
                self._body.close()
            self._body = None

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos, READ_CHUNK_SIZE)
        failures = 0
        while want > 0:
            if self._body is None or self._body_pos != self._pos:
                self._reopen()  # botocore retried this request itself; its errors propagate
            try:
                chunk = self._body.read(want)
                if not chunk:
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self._size)
            except STREAM_ERRORS as e:
                self._close_body()
                failures += 1
                if failures > READ_REOPEN_ATTEMPTS:
                    raise StorageUnavailableError(
                        errno.EIO,
                        f"read failed at byte {self._pos} of {self._size} "
                        f"after {failures} attempts ({type(e).__name__}: {e})",
                        self.name,
                    ) from e
                log.warning(
                    "%s: body broke at byte %d (%s); re-opening with Range (%d/%d)",
                    self.name,
                    self._pos,
                    type(e).__name__,
                    failures,
                    READ_REOPEN_ATTEMPTS,
                )
                _retries["reopens"] += 1
                time.sleep(READ_BACKOFF_S * 2 ** (failures - 1))
                continue
            view[: len(chunk)] = chunk
            self._pos = self._body_pos = self._pos + len(chunk)
            return len(chunk)
        return 0

    def readall(self) -> bytes:
        out = bytearray(max(self._size - self._pos, 0))
        view, got = memoryview(out), 0
        while got < len(out):
            got += self.readinto(view[got:])
        return bytes(out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.name}: seek to negative position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._close_body()
        super().close()
