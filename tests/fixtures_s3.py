"""S3 test fixtures: a loopback S3 API server (moto), a per-test bucket, a fault-injection proxy.

The server is moto's ``ThreadedMotoServer`` on 127.0.0.1 with an ephemeral port, started once
per session and stopped by handle (DESIGN §10). ``s3_env`` points the standard AWS environment
at it for one test and creates a fresh bucket, so tests never share objects. ``fault_proxy``
puts a TCP proxy in front of the server that answers 503, resets at connect or resets
mid-body for a seeded-random fraction of connections (the moto server closes every connection
after one response, so a connection is a request).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import select
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import boto3
import pytest

REGION = "us-east-1"
ACCESS_KEY = "testing"
IO_TIMEOUT_S = 10.0
SELECT_TICK_S = 0.1
FINAL_HEAD_RE = re.compile(rb"HTTP/1\.[01] [2-5]\d\d .*?\r\n\r\n", re.DOTALL)
FATES = ("503", "reset_connect", "reset_body")
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>injected by the test proxy</Message></Error>"
)


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """TCP proxy on 127.0.0.1 that injects one fate per accepted connection.

    Args:
        upstream: (host, port) of the real server.
        seed: Seeds the fate of each connection, in accept order.
        p_503: Fraction answered ``503 SlowDown`` without reaching the server.
        p_reset_connect: Fraction reset right after accept.
        p_reset_body: Fraction reset after ``reset_after`` bytes of response body.
        reset_after: Bytes of final-response body (after any ``100 Continue``) forwarded
            before a mid-body reset.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        seed: int = 0,
        p_503: float = 0.0,
        p_reset_connect: float = 0.0,
        p_reset_body: float = 0.0,
        reset_after: int = 64 * 1024,
    ) -> None:
        self._upstream = upstream
        self._rng = random.Random(seed)
        self._weights = (p_503, p_reset_connect, p_reset_body)
        self._reset_after = reset_after
        self.counts: Counter[str] = Counter()  # fate -> connections
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(SELECT_TICK_S)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def _fate(self) -> str:
        r, edge = self._rng.random(), 0.0
        for fate, p in zip(FATES, self._weights, strict=False):
            edge += p
            if r < edge:
                return fate
        return "ok"

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            fate = self._fate()
            self.counts[fate] += 1
            thread = threading.Thread(target=self._serve, args=(conn, fate), daemon=True)
            with self._lock:
                self._live.add(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, fate: str) -> None:
        upstream = None
        try:
            conn.settimeout(IO_TIMEOUT_S)
            if fate == "reset_connect":
                return _reset(conn)
            if fate == "503":
                return self._answer_503(conn)
            upstream = socket.create_connection(self._upstream, timeout=IO_TIMEOUT_S)
            with self._lock:
                self._live.add(upstream)
            limit = self._reset_after if fate == "reset_body" else None
            if self._pump(conn, upstream, limit):
                time.sleep(0.05)  # let the client read what was sent before the RST
                _reset(conn)
                _reset(upstream)
        except OSError:
            pass
        finally:
            for sock in (conn, upstream):
                if sock is not None:
                    sock.close()
                    with self._lock:
                        self._live.discard(sock)

    @staticmethod
    def _answer_503(conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        head, _, body = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").lower().split("\r\n")
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        if headers.get("expect", "").strip() != "100-continue":  # else no body is coming
            missing = int(headers.get("content-length", "0")) - len(body)
            while missing > 0 and (data := conn.recv(min(missing, 65536))):
                missing -= len(data)
        conn.sendall(
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY)
        )
        conn.shutdown(socket.SHUT_WR)

    def _pump(self, conn: socket.socket, upstream: socket.socket, limit: int | None) -> bool:
        """Relay both ways; True when the connection must be reset (``limit`` body bytes sent)."""
        sent, cut, head = 0, None, b""
        while not self._stopped.is_set():
            readable, _, _ = select.select([conn, upstream], [], [], SELECT_TICK_S)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return False
                if sock is conn:
                    upstream.sendall(data)
                    continue
                if limit is not None and cut is None:
                    head += data
                    final = FINAL_HEAD_RE.search(head)  # skips "100 Continue"
                    cut = final.end() + limit if final else None
                if cut is not None and sent + len(data) >= cut:
                    conn.sendall(data[: cut - sent])
                    return True
                conn.sendall(data)
                sent += len(data)
        return False

    def stop(self) -> None:
        """Stop accepting (later connections are refused) and cut every live connection."""
        self._stopped.set()
        self._listener.close()
        self._accepter.join()
        with self._lock:
            live, threads = list(self._live), list(self._threads)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(IO_TIMEOUT_S)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on 127.0.0.1 (one per session, stopped by handle)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _point_env_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")  # ignore the user's ~/.aws
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


def s3_admin_client(endpoint: str):
    """A plain boto3 client for test set-up and checks (not the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=ACCESS_KEY,
    )


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Points the AWS environment at the test server and yields a fresh ``s3://bucket``."""
    _point_env_at(monkeypatch, s3_server)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    admin = s3_admin_client(s3_server)
    admin.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # free memory
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
        if keys:
            admin.delete_objects(Bucket=bucket, Delete={"Objects": keys})


@pytest.fixture
def fault_proxy(
    s3_env: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``fault_proxy(max_attempts=N, **FaultProxy kwargs)`` starts a proxy in front
    of the server and points ``AWS_ENDPOINT_URL`` (and ``AWS_MAX_ATTEMPTS``) at it."""
    proxies: list[FaultProxy] = []
    host, port = s3_server.rsplit("//", 1)[1].split(":")

    def start(*, max_attempts: int = 10, **kwargs) -> FaultProxy:
        proxy = FaultProxy((host, int(port)), **kwargs)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(max_attempts))
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
