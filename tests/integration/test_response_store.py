"""Stored responses (store_bounded.lua) against a real redis-server: TTL, size and
count bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sllm.kv.keys import Keys
from sllm.kv.store import Store


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("t"), patient=False)
    yield s
    await s.close()


def record(n: int, size: int = 10) -> dict[str, object]:
    return {"response": {"id": f"r{n}", "output": ["x" * size]}, "input": []}


async def test_saved_loaded_deleted_and_kept_for_the_ttl(store: Store) -> None:
    responses = store.responses
    assert await responses.save("r1", record(1), ttl=60, max_bytes=1000, max_count=10)
    assert await responses.load("r1") == record(1)
    assert 0 < await store.client.ttl(store.keys.response("r1")) <= 60
    assert await responses.delete("r1") and await responses.load("r1") is None
    assert not await responses.delete("r1")
    assert await store.client.zcard(store.keys.responses) == 0


async def test_the_store_is_bounded_in_size_and_number(store: Store) -> None:
    responses = store.responses
    assert not await responses.save("big", record(0, 2000), ttl=60, max_bytes=1000, max_count=3)
    assert await responses.load("big") is None
    for n in range(5):
        assert await responses.save(f"r{n}", record(n), ttl=60, max_bytes=1000, max_count=3)
    # The oldest two made room for the newest.
    assert [await responses.load(f"r{n}") is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert await store.client.zcard(store.keys.responses) == 3


async def test_a_models_answer_cache_is_bounded_and_kept_apart(store: Store) -> None:
    answers = store.answers
    assert await answers.put("m", "k1", "one", ttl=60, max_entries=2, max_bytes=10)
    assert not await answers.put("m", "big", "x" * 11, ttl=60, max_entries=2, max_bytes=10)
    assert await answers.get("m", "k1") == "one" and await answers.get("other", "k1") is None
    for key in ("k2", "k3"):
        assert await answers.put("m", key, key, ttl=60, max_entries=2, max_bytes=10)
    assert [await answers.get("m", k) for k in ("k1", "k2", "k3")] == [None, "k2", "k3"]
    assert 0 < await store.client.ttl(store.keys.cached("m", "k3")) <= 60
