"""The head's side of a model's response cache (``response_cache`` in its deploy config):
whether a request may be answered from it, the lookup and the store, with hit/miss
metrics. Shared by every head: the answers live in Redis (``kv/answer_cache.py``)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, format_sse_event

from sllm.config import ResponseCacheConfig
from sllm.edge import fast_json
from sllm.head.cache_policy import cache_key
from sllm.kv import RedisError
from sllm.kv.records import ModelRecord
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

HEADER = "x-sllm-cache"
# How long a head trusts the model config it read: one Redis read per model and
# second, not per request; an update reaches the cache's keys within it.
CONFIG_SECONDS = 1.0
# Configs remembered at most (past it, the expired are forgotten first).
MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class CacheEntry:
    model: str
    key: str
    config: ResponseCacheConfig


class ResponseCache:
    def __init__(self, store: Store, metrics: HeadMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self._configs: dict[str, tuple[float, ModelRecord]] = {}

    async def _record(self, model: str) -> ModelRecord | None:
        now = time.monotonic()
        remembered = self._configs.get(model)
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        record = await self.store.registry.get_model(model)
        if record is None:
            self._configs.pop(model, None)
            return None
        if len(self._configs) >= MAX_REMEMBERED:
            self._configs = {m: v for m, v in self._configs.items() if v[0] > now}
            if len(self._configs) >= MAX_REMEMBERED:
                self._configs.clear()
        self._configs[model] = (now + CONFIG_SECONDS, record)
        return record

    async def entry(self, model: str, endpoint: str, body: dict[str, Any]) -> CacheEntry | None:
        """Where this request's answer is cached; None when its model caches nothing or
        it is not deterministic."""
        record = await self._record(model)
        raw = record.config.get("response_cache") if record is not None else None
        if record is None or not raw:
            return None
        key = cache_key(model, repr(record.updated), endpoint, body)
        if key is None:
            return None
        return CacheEntry(model, key, ResponseCacheConfig.model_validate(raw))

    async def lookup(self, entry: CacheEntry) -> str | None:
        """The cached answer, counted as a hit or a miss; a Redis error is a miss."""
        try:
            value = await self.store.answers.get(entry.model, entry.key)
        except RedisError as exc:
            log.warning("response cache of %s unreadable: %s", entry.model, exc)
            value = None
        self.metrics.response_cache.labels(entry.model, "hit" if value else "miss").inc()
        return value

    async def put(self, entry: CacheEntry, value: str) -> None:
        config = entry.config
        try:
            await self.store.answers.put(
                entry.model, entry.key, value, config.ttl, config.max_entries, config.max_bytes
            )
        except RedisError as exc:  # an answer not cached is only a later miss
            log.warning("could not cache an answer of %s: %s", entry.model, exc)


def replayed(cached: str, stream: bool, request: Request) -> Response:
    """A cached answer, as it was sent: one JSON object, or its stream's chunks again."""
    headers = {
        "x-request-id": request.headers.get("x-request-id") or uuid.uuid4().hex,
        HEADER: "hit",
    }
    if not stream:
        return Response(cached, headers=headers, media_type="application/json")

    async def events() -> AsyncIterator[bytes]:
        for chunk in json.loads(cached):
            yield fast_json.sse(chunk)  # as the stream it replays wrote it
        yield format_sse_event(data_str="[DONE]")

    return EventSourceResponse(events(), headers={**headers, "Cache-Control": "no-cache"})
