"""Prometheus metrics of the head and the worker, each in its own registry (no
process-global state: tests run several apps in one process).

Names follow Prometheus conventions: ``sllm_`` prefix, base units, ``_total`` counters,
``_seconds`` durations, ``_bytes`` sizes. Cold starts are split by ``phase``:
``placement`` (head: the autoscaler's decision until the worker accepted the start),
``process_start`` and ``weight_load`` (worker: spawn until the backend began loading,
and the loading itself) and ``first_token`` (worker: the instance ready until its first
output).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "HeadMetrics", "WorkerMetrics", "exposition"]

# Requests: from a millisecond (the dummy) to minutes (long generations).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_TOKEN = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_COLD = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class HeadMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "sllm_requests_total",
            "Requests answered, by model, endpoint and outcome (ok or the error code).",
            ["model", "endpoint", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "sllm_request_duration_seconds",
            "Time from a request's arrival to its last byte.",
            ["model", "endpoint"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "sllm_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first token.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.itl = Histogram(
            "sllm_inter_token_latency_seconds",
            "Time between consecutive chunks of a stream, as the gateway relays them.",
            ["model"],
            buckets=_TOKEN,
            registry=r,
        )
        self.generated_tokens = Counter(
            "sllm_generated_tokens_total",
            "Tokens generated for finished requests, by model (usage, else one per chunk).",
            ["model"],
            registry=r,
        )
        self.queue_length = Gauge(
            "sllm_queue_length", "Requests waiting for a model.", ["model"], registry=r
        )
        self.queue_oldest = Gauge(
            "sllm_queue_oldest_age_seconds",
            "Age of the oldest request waiting for a model.",
            ["model"],
            registry=r,
        )
        self.instances = Gauge(
            "sllm_instances", "Instances by model and state.", ["model", "state"], registry=r
        )
        self.workers = Gauge("sllm_workers", "Live workers.", registry=r)
        self.redis_writable = Gauge(
            "sllm_redis_writable",
            "1 while Redis accepts writes, 0 while it refuses them (full, or read-only).",
            registry=r,
        )
        self.redis_restarts = Counter(
            "sllm_redis_restarts_total",
            "Times this head saw Redis come back as a new server (a new run id).",
            registry=r,
        )
        self.suspected_workers = Counter(
            "sllm_worker_suspicions_total",
            "Workers suspected dead (a refused call, or failed health probes).",
            registry=r,
        )
        self.placements = Counter(
            "sllm_placements_total",
            "New instances placed, by the cache tier the chosen worker had the model in "
            '("sleeping": a sleeping instance woken).',
            ["model", "tier"],
            registry=r,
        )
        self.placement_estimate = Histogram(
            "sllm_placement_estimate_seconds",
            "Estimated time to ready of each placed instance, as placement ranked it.",
            ["model"],
            buckets=_COLD,
            registry=r,
        )
        self.cold_start = Histogram(
            "sllm_cold_start_seconds",
            "Cold-start phases of new instances (placement on the head).",
            ["model", "phase"],
            buckets=_COLD,
            registry=r,
        )
        self.retries = Counter(
            "sllm_retries_total",
            "Attempts that ended without an outcome and went back to the queue.",
            ["model"],
            registry=r,
        )
        self.response_cache = Counter(
            "sllm_response_cache_total",
            "Lookups in models' response caches, by model and result (hit or miss).",
            ["model", "result"],
            registry=r,
        )
        self.stale_dropped = Counter(
            "sllm_stale_messages_dropped_total",
            "Result messages of an older attempt, dropped by the gateway.",
            registry=r,
        )
        self.lease_expiries = Counter(
            "sllm_lease_expiries_total",
            "Task leases that expired and were reaped.",
            registry=r,
        )
        self.resumes = Counter(
            "sllm_stream_resumes_total",
            "Streams continued on another instance after theirs died.",
            ["model"],
            registry=r,
        )
        self.migrations = Counter(
            "sllm_migrations_total",
            "Requests moved to another instance on purpose, by why (scale_in, drain, "
            "operator) and how it ended (moved, destination_failed, source_failed, not_movable, "
            "ended: the request ended first).",
            ["model", "reason", "outcome"],
            registry=r,
        )
        self.migration_rounds = Counter(
            "sllm_migration_rounds_total",
            "Warm-up rounds migrations' destinations ran before taking over (per "
            "migration: this over sllm_migrations_total's moved).",
            ["model"],
            registry=r,
        )
        self.migration_gap = Histogram(
            "sllm_migration_gap_seconds",
            "The client's wait between the last chunk from the source and the first "
            "from the destination.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cpu = Gauge("sllm_worker_cpu_percent", "CPU use of the machine.", registry=r)
        self.memory_total = Gauge(
            "sllm_worker_memory_total_bytes", "Memory of the machine.", registry=r
        )
        self.memory_available = Gauge(
            "sllm_worker_memory_available_bytes", "Memory available.", registry=r
        )
        self.gpu_total = Gauge(
            "sllm_worker_gpu_memory_total_bytes", "Memory of each GPU.", ["gpu"], registry=r
        )
        self.gpu_used = Gauge(
            "sllm_worker_gpu_memory_used_bytes", "Memory used on each GPU.", ["gpu"], registry=r
        )
        self.instances = Gauge(
            "sllm_worker_instances", "Instances on this worker by state.", ["state"], registry=r
        )
        self.cache_bytes = Gauge(
            "sllm_worker_cache_bytes",
            "Bytes of stored models in each cache tier (memory, disk).",
            ["tier"],
            registry=r,
        )
        self.cached_models = Gauge(
            "sllm_worker_cached_models", "Stored models in each cache tier.", ["tier"], registry=r
        )
        self.cold_start = Histogram(
            "sllm_cold_start_seconds",
            "Cold-start phases of new instances (process start, weight load, first token).",
            ["model", "phase"],
            buckets=_COLD,
            registry=r,
        )
        self.sleep = Histogram(
            "sllm_sleep_seconds",
            "How long instances took to go to sleep and to wake (vLLM's sleep mode).",
            ["model", "change"],
            buckets=_COLD,
            registry=r,
        )
        self.proxied = Counter(
            "sllm_worker_requests_total",
            "Requests this worker passed to its backends, by model and outcome.",
            ["model", "outcome"],
            registry=r,
        )

    def resources(self, snapshot: dict[str, Any]) -> None:
        """Set the machine gauges from a hardware snapshot (the heartbeat's)."""
        self.cpu.set(snapshot.get("cpu_percent", 0.0))
        self.memory_total.set(snapshot.get("memory_total", 0))
        self.memory_available.set(snapshot.get("memory_available", 0))
        for gpu in snapshot.get("gpus", []):
            self.gpu_total.labels(str(gpu["index"])).set(gpu["memory_total"])
            self.gpu_used.labels(str(gpu["index"])).set(gpu["memory_used"])
