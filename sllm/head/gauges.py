"""The head's gauges (queues, instances, workers), read from Redis every few seconds
rather than at scrape time: prometheus-client collects synchronously."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from sllm.head.recent import Recent
from sllm.head.redis_health import RedisHealth
from sllm.kv import RedisError
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 2.0


async def refresh(
    store: Store, metrics: HeadMetrics, now: float, recent: Recent | None = None
) -> None:
    models = [m.name for m in await store.registry.list_models()]
    lengths = await store.tasks.queue_lengths(models)
    oldest = await store.tasks.oldest_queued(models)
    instances = await store.registry.all_instances(models)
    workers = await store.registry.list_workers()
    # Series of models deleted since the last pass must not linger.
    metrics.queue_length.clear()
    metrics.queue_oldest.clear()
    metrics.instances.clear()
    for model in models:
        metrics.queue_length.labels(model).set(lengths.get(model, 0))
        if recent is not None:  # the dashboard's queue over time
            recent.queue(now, model, lengths.get(model, 0))
        metrics.queue_oldest.labels(model).set(
            max(0.0, now - oldest[model]) if model in oldest else 0
        )
        for state, count in Counter(i.state for i in instances.get(model, [])).items():
            metrics.instances.labels(model, state).set(count)
    metrics.workers.set(len(workers))


async def check_redis(store: Store, health: RedisHealth, metrics: HeadMetrics) -> None:
    now = time.time()
    run_id = await store.registry.run_id()
    health.observe(run_id, await store.registry.write_refusal(now), now, metrics)


async def run(
    store: Store, metrics: HeadMetrics, health: RedisHealth, recent: Recent | None = None
) -> None:
    while True:
        try:
            await check_redis(store, health, metrics)
            await refresh(store, metrics, time.time(), recent)
        except RedisError as exc:
            log.debug("gauges not refreshed: %s", exc)
        await asyncio.sleep(REFRESH_INTERVAL)
