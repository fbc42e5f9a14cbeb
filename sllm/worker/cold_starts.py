"""A new instance's cold start as the worker records it: its phases (process start,
weight load, first token) for the metrics and the heartbeat's recent starts, and what
the backend says of its model once ready (sampling defaults, context length)."""

from __future__ import annotations

import time

import httpx

from sllm.metrics import WorkerMetrics
from sllm.worker.local_instances import Entry

# A readiness answer that does not come within this long is not waited for.
_HEALTH_TIMEOUT = 1.0


async def observe_start(entry: Entry, ready_at: float, metrics: WorkerMetrics) -> None:
    """Cold-start phases: spawn until the weights began loading, the loading, and
    (backends that do not tell) spawn until ready as the process start; and the
    model's sampling defaults, where the backend says."""
    info = entry.info
    async with httpx.AsyncClient(trust_env=False, timeout=_HEALTH_TIMEOUT) as client:
        health = await entry.backend.health(client, f"http://127.0.0.1:{entry.spec.port}")
    defaults = health.get("sampling_defaults")
    if isinstance(defaults, dict):
        info.sampling_defaults = {str(k): float(v) for k, v in defaults.items()}
    if isinstance(health.get("context_length"), int):
        info.context_length = health["context_length"]
    phases = metrics.cold_start
    start = entry.start
    try:
        load_started, load_seconds = (
            float(health["load_started"]),
            float(health["load_seconds"]),
        )
    except (KeyError, TypeError, ValueError):
        start["process_start"] = ready_at - info.started_at
        phases.labels(info.model, "process_start").observe(start["process_start"])
        return
    start["process_start"] = max(0.0, load_started - info.started_at)
    start["weight_load"] = load_seconds
    phases.labels(info.model, "process_start").observe(start["process_start"])
    phases.labels(info.model, "weight_load").observe(load_seconds)


def first_output(entry: Entry, metrics: WorkerMetrics) -> None:
    """The instance produced output: its first one ends its cold start."""
    if entry.info.ready_at is None or entry.first_output_seen:
        return
    entry.first_output_seen = True
    seconds = time.time() - entry.info.ready_at
    metrics.cold_start.labels(entry.info.model, "first_token").observe(seconds)
    entry.start["first_token"] = seconds
