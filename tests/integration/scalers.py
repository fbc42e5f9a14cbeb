"""An autoscaler on a real redis-server, for passes run by hand (``tick``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from sllm.config import HeadSettings
from sllm.head.autoscaler import Autoscaler
from sllm.head.recent import Recent
from sllm.head.worker_manager import WorkerManager
from sllm.kv.keys import Keys
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics


@asynccontextmanager
async def autoscaler(
    redis_url: str, prefix: str, workers: type[WorkerManager] = WorkerManager
) -> AsyncIterator[Autoscaler]:
    """A leader's autoscaler on a flushed Redis, its calls to workers made by
    ``workers``."""
    store = Store.connect(redis_url, Keys(prefix), patient=False)
    await store.client.flushall()
    settings = HeadSettings(redis_url=redis_url)
    try:
        async with aiohttp.ClientSession() as http:
            manager = workers(store, settings, http)
            try:
                yield Autoscaler(store, settings, "h", manager, HeadMetrics(), Recent())
            finally:
                await manager.close()
    finally:
        await store.close()
