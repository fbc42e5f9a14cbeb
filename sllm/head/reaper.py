"""Recovers claims nobody finishes: expired leases, and claims never stamped."""

from __future__ import annotations

import logging

from sllm.config import HeadSettings
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self, store: Store, settings: HeadSettings, metrics: HeadMetrics | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics or HeadMetrics()
        # Task ids seen in a processing list while still 'queued', with when first seen:
        # a dispatcher may be between its BLMOVE and its stamp, so wait a lease.
        self._unstamped: dict[str, float] = {}

    async def reap(self, models: list[str], now: float) -> None:
        """Requeue the tasks whose lease expired, and those of ``models`` (the ones
        with claimed tasks) that a dispatcher claimed but never stamped."""
        tasks = self.store.tasks
        for task_id in await tasks.expired_leases(now):
            result = await tasks.requeue(
                task_id, None, "its lease expired", now, int(self.settings.result_ttl)
            )
            log.warning("task %s: lease expired, %s", task_id, result)
            self.metrics.lease_expiries.inc()
        seen: dict[str, float] = {}
        for model in models:
            ids = await tasks.processing(model)
            if not ids:
                continue
            for task_id, state in zip(ids, await tasks.states(ids), strict=True):
                if state not in ("queued", None):
                    continue
                first = self._unstamped.get(task_id, now)
                seen[task_id] = first
                if now - first >= self.settings.lease_seconds and await tasks.recover_claim(
                    model, task_id
                ):
                    log.warning("task %s: claim never stamped, back to the queue", task_id)
                    seen.pop(task_id)
        self._unstamped = seen
