"""Stored responses of the Responses API (``store``, ``previous_response_id``,
``GET /v1/responses/{id}``): each under its own key with a TTL, indexed by time in a
sorted set whose oldest are dropped past a count, and none over a size bound, so the
store cannot grow without bound."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as redis

from sllm.kv.keys import Keys
from sllm.kv.scripts import Scripts


class ResponseStore:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts

    async def save(
        self, response_id: str, record: dict[str, Any], ttl: int, max_bytes: int, max_count: int
    ) -> bool:
        """Store ``record`` (``lua/store_bounded.lua``); False when it is over
        ``max_bytes`` (not stored)."""
        data = json.dumps(record)
        if len(data.encode()) > max_bytes:
            return False
        await self.scripts.store_bounded(
            keys=[self.keys.response(response_id), self.keys.responses],
            args=[response_id, data, ttl, time.time(), max_count, self.keys.response("")],
        )
        return True

    async def load(self, response_id: str) -> dict[str, Any] | None:
        data = await self.client.get(self.keys.response(response_id))
        return None if data is None else dict(json.loads(data))

    async def delete(self, response_id: str) -> bool:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.response(response_id))
            pipe.zrem(self.keys.responses, response_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)
