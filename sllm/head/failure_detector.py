"""Finding dead workers in a second, not a heartbeat timeout.

The leader probes every trusted worker's ``/health`` each ``PROBE_INTERVAL``; any head
suspects a worker at once when a call to it is refused (an ``/invoke``, a
``/start_instance``). A suspected worker (``suspect_worker.lua``) gets no new instance
and its instances are replaced on live workers on the autoscaler's next pass, which the
suspicion wakes. Its heartbeat clears it; the heartbeat timeout still prunes a worker
that never comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sllm.head.health_probe import HealthProbes
from sllm.head.worker_health import judge
from sllm.kv import RedisError
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0


class FailureDetector:
    def __init__(self, store: Store, metrics: HeadMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self._failures: dict[str, int] = {}
        self._probes = HealthProbes()

    async def suspect(self, node_id: str, reason: str) -> None:
        """Suspect ``node_id`` of being dead, for every head (once)."""
        try:
            if not await self.store.registry.suspect_worker(node_id, reason, time.time()):
                return
            await self.store.registry.publish_control({"type": "wake"})
        except RedisError as exc:
            log.warning("could not record worker %s as suspected (%s): %s", node_id, reason, exc)
            return
        self.metrics.suspected_workers.inc()
        log.warning(
            "worker %s suspected dead: %s; no instance goes there and its instances are "
            "replaced until it heartbeats again",
            node_id,
            reason,
        )

    async def run(self, leading: Callable[[], bool]) -> None:
        """Probe the trusted workers while ``leading()`` (the autoscaler's lock)."""
        try:
            while True:
                await asyncio.sleep(PROBE_INTERVAL)
                await self._probe_round(leading())
        finally:
            self._probes.close()

    async def _probe_round(self, leading: bool) -> None:
        if not leading:
            self._failures.clear()
            self._probes.close()
            return
        try:
            workers = await self.store.registry.worker_addresses()
        except RedisError:
            return  # the autoscaler's pass says so
        trusted = [(node_id, url) for node_id, url, suspect in workers if not suspect]
        self._probes.keep({url for _, url in trusted})
        results = await asyncio.gather(
            *(self._probes.probe(url, PROBE_TIMEOUT) for _, url in trusted)
        )
        self._failures = {
            node_id: self._failures.get(node_id, 0) for node_id, _ in trusted
        }  # forget workers pruned or suspected
        for (node_id, _), (result, detail) in zip(trusted, results, strict=True):
            failures, suspected = judge(self._failures[node_id], result)
            self._failures[node_id] = failures
            if suspected:
                await self.suspect(node_id, f"health probe {result}: {detail}")
