"""sllm's Redis clients on a Sentinel service: they find the primary, stay bounded, and
follow a failover to the replica the sentinels promote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sllm.kv.client import MAX_CONNECTIONS, connect
from tests.sentinels import SentinelSetup, start_sentinel_setup

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = start_sentinel_setup(tmp_path)
    yield setup
    setup.stop()


async def test_a_client_follows_a_failover_to_the_promoted_replica(
    sentinel_setup: SentinelSetup,
) -> None:
    replica_port = int(sentinel_setup.replica.url.rsplit(":", 1)[1].split("/")[0])
    client = connect(sentinel_setup.url, patient=True)
    try:
        await client.set("before", "1")
        # Both copies hold it before the primary dies (what WAIT is for).
        assert await client.execute_command("WAIT", 1, 2000) == 1
        sentinel_setup.kill_primary()
        killed = time.monotonic()
        deadline = killed + 60
        while True:
            try:
                await client.set("after", "2")
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "no primary within 60 s of the kill"
                await asyncio.sleep(0.1)
        print(f"writes went on {time.monotonic() - killed:.2f} s after the kill")
        assert sentinel_setup.primary_port() == replica_port
        assert await client.get("before") == "1" and await client.get("after") == "2"
    finally:
        await client.aclose()


async def test_a_burst_waits_for_a_connection_rather_than_failing(
    sentinel_setup: SentinelSetup,
) -> None:
    client = connect(sentinel_setup.url, patient=False)
    direct = redis.Redis(port=sentinel_setup.primary_port() or 0)
    try:
        # The replica's and the sentinels' connections, and this one.
        others = len(direct.client_list())
        # Every command of the burst wants a connection at once.
        replies = await asyncio.gather(*(client.incr("n") for _ in range(4 * MAX_CONNECTIONS)))
        assert sorted(replies) == list(range(1, 4 * MAX_CONNECTIONS + 1))
        assert len(direct.client_list()) - others <= MAX_CONNECTIONS
    finally:
        direct.close()
        await client.aclose()
