"""Putting idle instances to sleep within the host memory the worker may give their
weights (``sleep_room``), and keeping the memory tier's share of it in step; the sleep
and the wake themselves are the instance manager's."""

from __future__ import annotations

import asyncio
import logging

import psutil

from sllm.backends.base import BackendUnavailable
from sllm.worker.instance_manager import InstanceManager
from sllm.worker.model_cache import WorkerCache
from sllm.worker.sleep_room import Asleep, room_to_sleep

log = logging.getLogger(__name__)


class NoRoomToSleep(Exception):
    """The instance cannot sleep here; the message says why."""


class Sleepers:
    def __init__(self, instances: InstanceManager, cache: WorkerCache) -> None:
        self._instances = instances
        self._cache = cache
        # Sleeping instance -> bytes of host memory its weights hold.
        self._held: dict[str, int] = {}
        # One admission at a time: each counts what the ones before it hold.
        self._admitting = asyncio.Lock()

    async def put_to_sleep(self, instance_id: str) -> None:
        """Put a ready, idle instance to sleep, stopping the sleepers whose memory it
        needs. KeyError: unknown here; BackendUnavailable: not started in sleep mode;
        NoRoomToSleep; RuntimeError: not ready, or its backend did not sleep."""
        async with self._admitting:
            if not self._instances.sleeps(instance_id):
                raise BackendUnavailable(f"instance {instance_id!r} was not started in sleep mode")
            wanted = await self._cache.weights_bytes(instance_id)
            if wanted is None:
                raise NoRoomToSleep("the size of its weights is not known on this worker")
            asleep = [
                Asleep(i.instance_id, self._held.get(i.instance_id, 0), i.asleep_since or 0.0)
                for i in self._instances.asleep()
            ]
            memory = psutil.virtual_memory()
            limit = self._cache.cache.memory_limit
            victims = room_to_sleep(asleep, wanted, limit, memory.available, memory.total)
            if victims is None:
                raise NoRoomToSleep(
                    f"its weights ({wanted / 1e9:.2f} GB) do not fit in the host memory "
                    f"sleeping instances may hold ({limit / 1e9:.2f} GB, memory_cache_gb) "
                    f"with a tenth of the machine's memory left free"
                )
            for victim in victims:
                log.info("stopping sleeping instance %s: %s needs its memory", victim, instance_id)
                await self._instances.stop(
                    victim, reason="stopped while asleep: its host memory was needed"
                )
            self._held[instance_id] = wanted
            try:
                await self._instances.sleep(instance_id)
            except BaseException:
                self._held.pop(instance_id, None)
                raise
            await self._cache.asleep(self._holding())

    def changed(self, instance_id: str, state: str) -> None:
        """An instance's state changed: one that woke or ended holds nothing asleep."""
        if state != "sleeping" and self._held.pop(instance_id, None) is not None:
            self._cache.cache.asleep_bytes = self._holding()

    def _holding(self) -> int:
        asleep = {i.instance_id for i in self._instances.asleep()}
        return sum(b for i, b in self._held.items() if i in asleep)
