"""Fixtures shared by every test layer: a real redis-server on a free port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sllm.client.launcher import Child, free_port, start_redis

__all__ = ["free_port"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    server = start_redis(free_port(), tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def flush(url: str) -> None:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"FLUSHALL\r\n")
        s.recv(16)


@pytest.fixture
def redis_url(redis_server: Child) -> str:
    """The shared server, emptied before each test."""
    flush(redis_server.url)
    return redis_server.url
