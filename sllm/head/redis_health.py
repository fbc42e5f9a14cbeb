"""What each head knows of Redis itself: whether it accepts writes, and whether it is
still the server it was (its run id).

A Redis that refuses writes (``maxmemory`` with ``noeviction``, a read-only replica)
also refuses heartbeats: while it does, and for a whole heartbeat timeout after, no
worker is pruned for silence. A new run id is a restart or another server: its data may
be gone, and the cluster reconciles (workers re-register with their heartbeat and stop
the instances Redis does not know; the operator redeploys the models it lost).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)


@dataclass
class RedisHealth:
    run_id: str = ""
    refusal: str = ""  # Redis's answer to a write; "" while it accepts them
    refused_at: float = 0.0  # when a write was last refused

    def observe(self, run_id: str, refusal: str, now: float, metrics: HeadMetrics) -> None:
        if run_id and self.run_id and run_id != self.run_id:
            metrics.redis_restarts.inc()
            log.warning(
                "Redis restarted or was replaced (run id %s -> %s): what it held may be "
                "lost; workers re-register and stop instances it does not know; redeploy "
                "models it lost (sllm deploy)",
                self.run_id,
                run_id,
            )
        self.run_id = run_id or self.run_id
        if refusal:
            if not self.refusal:
                log.error(
                    "Redis refuses writes: %s; requests fail with 503 and heartbeats "
                    "cannot be stored (no worker is pruned for it)",
                    refusal,
                )
            self.refused_at = now
        elif self.refusal:
            log.warning("Redis accepts writes again")
        self.refusal = refusal
        metrics.redis_writable.set(0 if refusal else 1)

    def status(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "writable": not self.refusal,
            "refusal": self.refusal or None,
        }
