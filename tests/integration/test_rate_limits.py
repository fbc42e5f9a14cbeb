"""rate_limit.lua's token buckets against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sllm.kv.keys import Keys
from sllm.kv.rate_limits import RateLimits
from sllm.kv.store import Store

T0 = 1_700_000_000.0


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("t"), patient=False)
    yield s
    await s.close()


@pytest.fixture
def limits(store: Store) -> RateLimits:
    return RateLimits(store.client, store.keys)


async def test_requests_per_minute(limits: RateLimits) -> None:
    for i in range(3):
        assert (await limits.charge("k", 3, 0, 0, T0 + i * 0.001)).allowed
    refused = await limits.charge("k", 3, 0, 0, T0 + 0.003)
    assert not refused.allowed and refused.limit == "requests"
    # 3 per minute: one request's worth every 20 s, of which ~0 s have passed.
    assert 19_000 < refused.wait_ms <= 20_000
    # The bucket refills continuously: 20 s later one more request fits, not two.
    assert (await limits.charge("k", 3, 0, 0, T0 + 20.01)).allowed
    assert not (await limits.charge("k", 3, 0, 0, T0 + 20.02)).allowed


async def test_clients_have_their_own_buckets(limits: RateLimits) -> None:
    assert (await limits.charge("a", 1, 0, 0, T0)).allowed
    assert not (await limits.charge("a", 1, 0, 0, T0)).allowed
    assert (await limits.charge("b", 1, 0, 0, T0)).allowed


async def test_tokens_per_minute(limits: RateLimits) -> None:
    assert (await limits.charge("k", 0, 600, 400, T0)).allowed
    refused = await limits.charge("k", 0, 600, 300, T0)
    # 200 left of 300 needed; 600 per minute is 10 per second: 10 s.
    assert not refused.allowed and refused.limit == "tokens" and refused.wait_ms == 10_000
    assert (await limits.charge("k", 0, 600, 100, T0)).allowed
    assert (await limits.charge("k", 0, 600, 300, T0 + 30)).allowed


async def test_a_refusal_charges_nothing(limits: RateLimits) -> None:
    """Both buckets are charged or neither: a request refused for its tokens keeps its
    request slot, and one refused for requests keeps its tokens."""
    assert (await limits.charge("k", 2, 100, 90, T0)).allowed
    assert not (await limits.charge("k", 2, 100, 50, T0)).allowed  # tokens
    assert (await limits.charge("k", 2, 100, 10, T0)).allowed  # the request slot was kept
    refused = await limits.charge("k", 2, 100, 0, T0)
    assert not refused.allowed and refused.limit == "requests"


async def test_a_cost_above_the_whole_bucket_waits_for_a_full_bucket(limits: RateLimits) -> None:
    assert (await limits.charge("k", 0, 100, 5000, T0)).allowed
    refused = await limits.charge("k", 0, 100, 5000, T0 + 30)
    assert not refused.allowed and refused.wait_ms == 30_000
    assert (await limits.charge("k", 0, 100, 5000, T0 + 60)).allowed


async def test_unlimited_touches_nothing(limits: RateLimits, store: Store) -> None:
    for _ in range(100):
        assert (await limits.charge("k", 0, 0, 10**9, T0)).allowed
    assert await store.client.exists(store.keys.rate_limit("k")) == 0


async def test_idle_buckets_expire_and_clocks_never_run_back(
    limits: RateLimits, store: Store
) -> None:
    assert (await limits.charge("k", 1, 0, 0, T0)).allowed
    ttl = await store.client.pttl(store.keys.rate_limit("k"))
    assert 60_000 <= ttl <= 61_000
    # Another head whose clock is behind sees an empty bucket, not a refill.
    assert not (await limits.charge("k", 1, 0, 0, T0 - 120)).allowed


async def test_concurrent_charges_never_overspend(limits: RateLimits) -> None:
    results = await asyncio.gather(*(limits.charge("k", 10, 0, 0, T0) for _ in range(50)))
    assert sum(r.allowed for r in results) == 10
