"""The worker's side of the tiered model cache (``sllm.store.tiers``): which models
its instances serve, keeping a model in memory when its instance stops, holding both
tiers within their limits, and the heartbeat's report."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psutil

from sllm.backends.model_source import local_weights_bytes
from sllm.config import WorkerSettings
from sllm.metrics import WorkerMetrics
from sllm.store.tiers import ModelCache, fastest

log = logging.getLogger(__name__)

GB = 1_000_000_000
# How often the limits are enforced besides after each promotion: backends store new
# models on disk on their own.
UPKEEP_INTERVAL = 30.0


def build_cache(settings: WorkerSettings) -> ModelCache:
    if settings.memory_cache_gb is not None:
        memory_limit = int(settings.memory_cache_gb * GB)
    else:
        memory_limit = psutil.virtual_memory().total // 4
    disk_limit = int(settings.disk_cache_gb * GB) if settings.disk_cache_gb else None
    return ModelCache(settings.storage_path, memory_limit, disk_limit)


class WorkerCache:
    def __init__(self, cache: ModelCache, metrics: WorkerMetrics) -> None:
        self.cache = cache
        self._metrics = metrics
        self._sources: dict[str, str] = {}  # instance id -> the source it serves
        self._tasks: set[asyncio.Task[Any]] = set()
        # One promotion or eviction at a time: they list and delete the same directories.
        self._busy = asyncio.Lock()

    def _in_use(self) -> set[str]:
        return set(self._sources.values())

    def started(self, instance_id: str, backend_config: dict[str, Any]) -> None:
        source = backend_config.get("pretrained_model_name_or_path")
        if isinstance(source, str):
            self._sources[instance_id] = source

    def ended(self, instance_id: str, state: str) -> None:
        """An instance stopped (its model goes to the memory tier) or failed."""
        source = self._sources.pop(instance_id, None)
        if source is None or state != "stopped" or source in self._in_use():
            return
        task = asyncio.ensure_future(self._keep(source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep(self, source: str) -> None:
        async with self._busy:
            try:
                await asyncio.to_thread(self.cache.keep_in_memory, source, self._in_use())
            except OSError as exc:
                log.warning("keeping %s in memory failed: %s", source, exc)

    async def weights_bytes(self, instance_id: str) -> int | None:
        """Bytes of the weights an instance here serves: its stored copy's, else its
        source's files'; None when neither is known."""
        source = self._sources.get(instance_id)
        if source is None:
            return None
        entries = await asyncio.to_thread(self.cache.entries)
        stored = fastest(entries).get(source)
        if stored is not None:
            return stored.bytes
        return await asyncio.to_thread(local_weights_bytes, source)

    async def asleep(self, held: int) -> None:
        """Sleeping instances now hold ``held`` bytes of host memory: the memory tier
        keeps within what is left of its limit."""
        grew = held > self.cache.asleep_bytes
        self.cache.asleep_bytes = held
        if not grew:
            return
        async with self._busy:
            try:
                await asyncio.to_thread(self.cache.evict, self._in_use())
            except OSError as exc:
                log.warning("cache eviction failed: %s", exc)

    async def upkeep(self) -> None:
        """Hold again what the memory tier held before the worker started, then evict to
        the limits, now and every UPKEEP_INTERVAL, until cancelled."""
        async with self._busy:
            try:
                await asyncio.to_thread(self.cache.restore)
            except OSError as exc:
                log.warning("restoring the memory tier failed: %s", exc)
        while True:
            async with self._busy:
                try:
                    await asyncio.to_thread(self.cache.evict, self._in_use())
                except OSError as exc:
                    log.warning("cache eviction failed: %s", exc)
            await asyncio.sleep(UPKEEP_INTERVAL)

    async def report(self) -> list[dict[str, Any]]:
        """For the heartbeat: each deployed source at its fastest tier."""
        entries = await asyncio.to_thread(self.cache.entries)
        for tier in ("memory", "disk"):
            held = [e for e in entries if e.tier == tier]
            self._metrics.cache_bytes.labels(tier).set(sum(e.bytes for e in held))
            self._metrics.cached_models.labels(tier).set(len(held))
        return [
            {"source": source, "tier": c.tier, "bytes": c.bytes}
            for source, c in sorted(fastest(entries).items())
        ]

    async def close(self) -> None:
        """Waits for a promotion in progress, then lets go of the pages held."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        async with self._busy:
            self.cache.close()
