"""A model's response cache through real heads and a worker: hits, misses, replayed
streams, what is never cached, invalidation by a config update, shared by heads."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

CACHE = {"ttl": 60, "max_entries": 100}
CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "tell me about caches"}],
    "max_tokens": 12,
}


def ask(url: str, **extra: Any) -> httpx.Response:
    resp = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp


def test_deterministic_answers_come_from_the_cache(cluster: Cluster) -> None:
    head = cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m", response_cache=CACHE)
    first = ask(head.url, temperature=0)
    assert first.headers["x-sllm-cache"] == "miss"
    again = ask(head.url, temperature=0, user="someone else")
    assert again.headers["x-sllm-cache"] == "hit" and again.json() == first.json()

    # A stream is replayed as a stream, chunk for chunk.
    streamed = [ask(head.url, temperature=0, stream=True) for _ in range(2)]
    assert [s.headers["x-sllm-cache"] for s in streamed] == ["miss", "hit"]
    assert streamed[0].text == streamed[1].text and streamed[1].text.endswith("data: [DONE]\n\n")

    seeded = [ask(head.url, temperature=0.9, seed=4, n=2) for _ in range(2)]
    assert [s.headers["x-sllm-cache"] for s in seeded] == ["miss", "hit"]
    for extra in ({"temperature": 0.9, "n": 2}, {}):  # sampled without a seed
        assert "x-sllm-cache" not in ask(head.url, **extra).headers

    # Another head shares the cache.
    other = cluster.start_head()
    assert ask(other.url, temperature=0).headers["x-sllm-cache"] == "hit"

    # A config update invalidates it (the version is in the key; heads reread it in 1 s).
    config = {
        "model": "m",
        "backend": "dummy",
        "response_cache": CACHE,
        "auto_scaling_config": {"max_instances": 1, "keep_alive": 30},
        "max_queue_length": 999,
    }
    assert httpx.post(f"{head.url}/update", json=config, timeout=10).status_code == 200
    time.sleep(1.2)
    assert ask(head.url, temperature=0).headers["x-sllm-cache"] == "miss"

    metrics = httpx.get(f"{head.url}/metrics", timeout=10).text
    assert 'sllm_response_cache_total{model="m",result="hit"}' in metrics


def test_a_model_without_a_cache_is_never_answered_from_one(cluster: Cluster) -> None:
    head = cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m")
    for _ in range(2):
        assert "x-sllm-cache" not in ask(head.url, temperature=0).headers
