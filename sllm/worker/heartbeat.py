"""The worker's heartbeat: tells the head what this machine has and runs.

With several heads (``head_url`` lists them) beats go to one at a time; a failed beat
moves them to the next, so a worker outlives the head it was talking to (any head
serves the cluster: they share Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from sllm.backends.registry import available_backends, unavailable_backends
from sllm.config import WorkerSettings
from sllm.metrics import WorkerMetrics
from sllm.store.catalog import store_root
from sllm.store.peer_fetch import fetch_speed
from sllm.worker import hardware
from sllm.worker.instance_manager import InstanceManager
from sllm.worker.model_cache import WorkerCache

log = logging.getLogger(__name__)

OnConfirm = Callable[[str, str | None], Awaitable[None]]

_HTTP_TIMEOUT = 5.0
_FIRST_RETRY = 0.5


def advertise_url(settings: WorkerSettings) -> str:
    """The URL the head calls this worker on."""
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"http://{host}:{settings.port}"


class Heartbeat:
    def __init__(
        self,
        settings: WorkerSettings,
        instances: InstanceManager,
        on_confirm: OnConfirm,
        metrics: WorkerMetrics | None = None,
        cache: WorkerCache | None = None,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._instances = instances
        self._on_confirm = on_confirm
        self._metrics = metrics
        self._node_id = settings.node_id
        self._url = advertise_url(settings)
        self._heads = settings.head_urls()
        self._head = 0
        self._wake = asyncio.Event()
        # Leaving (SIGTERM: for good) or asked to drain by the head (until it says not).
        self._leaving = False
        self._asked_to_drain = False
        self._stopping: set[asyncio.Task[bool]] = set()

    @property
    def node_id(self) -> str | None:
        return self._node_id

    @node_id.setter
    def node_id(self, value: str) -> None:
        self._node_id = value

    @property
    def url(self) -> str:
        return self._url

    def beat_now(self) -> None:
        """Send the next heartbeat at once (an instance changed state)."""
        self._wake.set()

    @property
    def draining(self) -> bool:
        return self._leaving or self._asked_to_drain

    def drain(self) -> None:
        """The worker is shutting down: tell the head at once, so that it routes nothing
        more to this worker's instances and places no new one here (it advertises no
        backend from now on), while the calls in flight finish."""
        self._leaving = True
        self.beat_now()

    def _asked(self, drain: bool) -> None:
        """The head's answer says whether an operator asked this worker to drain (the
        same path as SIGTERM, but undone when they ask again)."""
        if drain != self._asked_to_drain:
            self._asked_to_drain = drain
            log.info("the head asks this worker to %s", "drain" if drain else "take work again")
            self.beat_now()

    async def run(self) -> None:
        """Beat until cancelled; failures back off from 0.5 s up to the interval."""
        interval = self._settings.heartbeat_interval
        failures = 0
        # trust_env=False: a proxy variable meant for the internet must not catch the head.
        async with httpx.AsyncClient(
            timeout=_HTTP_TIMEOUT, trust_env=False, headers=self._auth_headers()
        ) as client:
            while True:
                # Cleared before the beat, so a change during it triggers one more.
                self._wake.clear()
                if await self.beat(client):
                    failures = 0
                    delay = interval
                else:
                    failures += 1
                    delay = min(interval, _FIRST_RETRY * 2 ** min(failures - 1, 16))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def beat(self, client: httpx.AsyncClient) -> bool:
        """One heartbeat and its confirmation; False (logged) on any failure."""
        head = self._heads[self._head]
        try:
            payload = await self._payload()
            resp = await client.post(f"{head}/heartbeat", json=payload)
            resp.raise_for_status()
            answer = resp.json()
            node_id = str(answer["node_id"])
            redis_url = answer.get("redis_url")
            unknown = [str(i) for i in answer.get("stop_instances") or []]
            drain = bool(answer.get("drain"))
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("heartbeat to %s failed: %s", head, exc or type(exc).__name__)
            if len(self._heads) > 1:
                self._head = (self._head + 1) % len(self._heads)
                log.info("heartbeats go to %s from now on", self._heads[self._head])
            return False
        if node_id != self._node_id:
            log.info("head %s knows this worker as %s", head, node_id)
        self._node_id = node_id
        self._asked(drain)
        for instance_id in unknown:
            self._stop_unknown(instance_id)
        try:
            await self._on_confirm(node_id, redis_url)
        except Exception:
            log.exception("handling the head's confirmation failed")
            return False
        return True

    def _stop_unknown(self, instance_id: str) -> None:
        """Stop an instance the cluster does not know: Redis lost its record (flushed,
        or replaced), or it was replaced while this worker was cut off."""
        if any(t.get_name() == instance_id for t in self._stopping):
            return
        log.warning("instance %s is unknown to the cluster: stopping it", instance_id)
        reason = "unknown to the cluster (its Redis record is gone)"
        job = asyncio.create_task(self._instances.stop(instance_id, reason=reason))
        job.set_name(instance_id)
        self._stopping.add(job)
        job.add_done_callback(self._stopping.discard)

    def _auth_headers(self) -> dict[str, str]:
        """The cluster token, which the head's /heartbeat checks."""
        token = self._settings.cluster_token
        secret = token.get_secret_value().strip() if token is not None else ""
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    async def _payload(self) -> dict[str, Any]:
        # NVML calls can take a while on a busy machine; keep them off the loop.
        resources = await asyncio.to_thread(hardware.snapshot)
        # The worker's children: its instances, warm processes and stores in progress.
        resources["sllm_memory"] = await asyncio.to_thread(hardware.owned_memory, os.getpid())
        # How fast models came from peers here last time: placement's estimate for the next.
        speed = await asyncio.to_thread(fetch_speed, store_root(self._settings.storage_path))
        if speed is not None:
            resources["peer_fetch_bytes_per_s"] = speed
        if self._metrics is not None:
            self._metrics.resources(resources)
        return {
            "node_id": self._node_id,
            "url": self._url,
            "resources": resources,
            "backends": [] if self.draining else available_backends(),
            "unavailable": unavailable_backends(),
            "draining": self.draining,
            "instances": [
                {
                    "instance_id": i.instance_id,
                    "model": i.model,
                    "backend": i.backend,
                    "state": i.state,
                    "port": i.port,
                    "sampling_defaults": i.sampling_defaults,
                    "context_length": i.context_length,
                }
                for i in self._instances.list()
            ],
            "storage_path": str(self._settings.storage_path),
            # Which models this worker could start fastest, for placement.
            "cache": await self._cache.report() if self._cache is not None else [],
            "warm_processes": self._instances.warm_idle(),
            "warm_pools": self._instances.warm_pools(),
            "cold_starts": self._instances.recent_starts(),
        }
