"""A model's response cache in Redis: answers under their request's key, each with a
TTL, indexed by time and trimmed to a count (``store_bounded.lua``), none over a size
bound."""

from __future__ import annotations

import time

import redis.asyncio as redis

from sllm.kv.keys import Keys
from sllm.kv.scripts import Scripts


class AnswerCache:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts

    async def get(self, model: str, key: str) -> str | None:
        value = await self.client.get(self.keys.cached(model, key))
        return None if value is None else str(value)  # the client decodes responses

    async def put(
        self, model: str, key: str, value: str, ttl: float, max_entries: int, max_bytes: int
    ) -> bool:
        """Cache ``value``; False when it is over ``max_bytes`` (not cached)."""
        if len(value.encode()) > max_bytes:
            return False
        await self.scripts.store_bounded(
            keys=[self.keys.cached(model, key), self.keys.cache_index(model)],
            args=[
                key,
                value,
                max(1, int(ttl)),
                time.time(),
                max_entries,
                self.keys.cached(model, ""),
            ],
        )
        return True
