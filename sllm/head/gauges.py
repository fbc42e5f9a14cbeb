"""The head's gauges (queues, instances, workers), read from Redis every few seconds
rather than at scrape time: prometheus-client collects synchronously."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from prometheus_client import Gauge

from sllm.head.recent import Recent
from sllm.head.redis_health import RedisHealth
from sllm.kv import RedisError
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 2.0


Series = dict[tuple[str, ...], float]


class Shown:
    """The series each gauge showed at the last pass, with their values."""

    def __init__(self) -> None:
        self._by_gauge: dict[Gauge, Series] = {}

    def show(self, gauge: Gauge, series: Series) -> None:
        """Set the series of ``series`` that changed and remove those shown before that
        are gone (a deleted model's): clearing every series each pass made a thousand
        models' gauges anew every two seconds, a fifth of an idle head's time, and
        setting them all again was most of what was left."""
        shown = self._by_gauge.get(gauge, {})
        for labels in shown.keys() - series.keys():
            gauge.remove(*labels)
        for labels, value in series.items():
            if shown.get(labels) != value:
                gauge.labels(*labels).set(value)
        self._by_gauge[gauge] = series


async def refresh(
    store: Store,
    metrics: HeadMetrics,
    now: float,
    recent: Recent | None = None,
    shown: Shown | None = None,
) -> None:
    models = [m.name for m in await store.registry.list_models()]
    lengths = await store.tasks.queue_lengths(models)
    oldest = await store.tasks.oldest_queued([m for m, n in lengths.items() if n])
    instances = await store.registry.all_instances(models)
    shown = shown or Shown()
    shown.show(metrics.queue_length, {(m,): lengths.get(m, 0) for m in models})
    shown.show(
        metrics.queue_oldest,
        {(m,): max(0.0, now - oldest[m]) if m in oldest else 0.0 for m in models},
    )
    counts = Counter((m, i.state) for m in models for i in instances.get(m, []))
    shown.show(metrics.instances, {key: float(n) for key, n in counts.items()})
    if recent is not None:  # the dashboard's queue over time (a missing one reads 0)
        for model, length in lengths.items():
            if length:
                recent.queue(now, model, length)
    metrics.workers.set(await store.registry.worker_count())


async def check_redis(store: Store, health: RedisHealth, metrics: HeadMetrics) -> None:
    now = time.time()
    run_id = await store.registry.run_id()
    health.observe(run_id, await store.registry.write_refusal(now), now, metrics)


async def run(
    store: Store, metrics: HeadMetrics, health: RedisHealth, recent: Recent | None = None
) -> None:
    shown = Shown()
    while True:
        try:
            await check_redis(store, health, metrics)
            await refresh(store, metrics, time.time(), recent, shown)
        except RedisError as exc:
            log.debug("gauges not refreshed: %s", exc)
        await asyncio.sleep(REFRESH_INTERVAL)
