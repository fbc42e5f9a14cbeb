"""What a client may make the head and a worker hold before its request reaches the
app: header bytes and count (431), time to send headers (408), an idle or silent
connection (closed), a body over the limit sent slowly (413, readable), a body that
stalls (408). Raw sockets, since HTTP clients will not misbehave on request."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LIMITS = {
    "SLLM_MAX_HEADER_BYTES": "8192",
    "SLLM_MAX_HEADERS": "20",
    "SLLM_HEADER_TIMEOUT": "1",
    "SLLM_KEEP_ALIVE_TIMEOUT": "1",
    "SLLM_BODY_TIMEOUT": "1",
    "SLLM_MAX_BODY_BYTES": "4096",
}


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; then ours closes."""
    out = b""
    with sock:
        while chunk := sock.recv(65536):
            out += chunk
    return out


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw else 0


def test_headers_too_large_or_too_many_are_a_431_and_the_server_stays_responsive(
    cluster: Cluster,
) -> None:
    head = cluster.start_head(**LIMITS)
    worker = cluster.start_worker(**LIMITS)
    for url in (head.url, worker.url):
        sock = connect(url)
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # 4 MiB of one header line, never ended
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending: as meant
        raw = answer(sock)
        assert status_of(raw) == 431 and b"8192 bytes" in raw, raw[:300]
        assert time.monotonic() - started < 5
        assert httpx.get(f"{url}/health", timeout=2).status_code == 200

        many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        sock = connect(url)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        raw = answer(sock)
        assert status_of(raw) == 431 and b"more than 20 request headers" in raw, raw[:300]
    # Within the limits, as usual.
    ok = httpx.get(f"{head.url}/health", headers={f"X-H{i}": "v" * 100 for i in range(15)})
    assert ok.status_code == 200


def test_slow_and_silent_connections_are_closed(cluster: Cluster) -> None:
    head = cluster.start_head(**LIMITS)
    # Headers a byte at a time: a 408 once the header timeout (1 s) passes.
    sock = connect(head.url)
    started = time.monotonic()
    closed_by_server = False
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_by_server = True
            break
        time.sleep(0.1)
        if time.monotonic() - started > 3:
            break
    raw = answer(sock) if not closed_by_server else b""
    sock.close()
    assert closed_by_server or (status_of(raw) == 408 and b"within 1.0 s" in raw), raw
    assert time.monotonic() - started < 3

    # A connection that sends nothing, and one idle after a response: closed after the
    # keep-alive timeout (1 s).
    silent = connect(head.url)
    started = time.monotonic()
    assert answer(silent) == b""
    assert 0.5 < time.monotonic() - started < 3
    idle = connect(head.url)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = idle.recv(65536)
    while b"}" not in first:  # the rest of /health's JSON
        first += idle.recv(65536)
    assert status_of(first) == 200
    started = time.monotonic()
    assert answer(idle) == b""
    assert time.monotonic() - started < 3


def slow(data: bytes, size: int, pause: float) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        time.sleep(pause)
        yield data[start : start + size]


def test_bodies_over_the_limit_sent_slowly_get_a_readable_413_and_stalls_a_408(
    cluster: Cluster,
) -> None:
    head = cluster.start_head(**LIMITS)
    url = f"{head.url}/v1/chat/completions"
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 200_000 + b'"}]}'
    json = {"content-type": "application/json"}
    # Declared and chunked alike: the client sends it all, slowly, then reads the 413.
    declared = httpx.post(url, content=big, headers=json, timeout=30)
    assert declared.status_code == 413
    for body in (slow(big, 16384, 0.05), slow(big[:10_000] + big[-10:], 512, 0.01)):
        resp = httpx.post(url, content=body, headers=json, timeout=30)
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"]["code"] == "request_too_large"

    # A body that stops half way: 408 after the body timeout (1 s).
    sock = connect(head.url)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + big[:100]
    )
    started = time.monotonic()
    raw = answer(sock)
    assert status_of(raw) == 408 and b"request_timeout" in raw, raw
    assert 0.8 < time.monotonic() - started < 5
