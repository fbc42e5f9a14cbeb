"""Cancelling the tasks of clients that went away, and holding the cancels that Redis
could not take until it takes them."""

from __future__ import annotations

import asyncio
import logging
import time

from sllm.kv.store import Store
from sllm.kv.tasks import NewTask

log = logging.getLogger(__name__)

# Cancels kept for replay while Redis is away; past this the oldest are given up
# (their deadlines still end them).
MAX_UNSENT_CANCELS = 10_000


class Cancels:
    def __init__(self, store: Store, result_ttl: float) -> None:
        self.store = store
        self.result_ttl = result_ttl
        self._background: set[asyncio.Task[None]] = set()
        self._unsent: dict[str, NewTask] = {}
        self._replaying: asyncio.Task[None] | None = None

    def cancel(self, task: NewTask) -> None:
        """Cancel ``task``. Runs detached: the caller may itself be inside a cancelled
        scope where nothing more can be awaited."""
        job = asyncio.create_task(self._cancel(task))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _cancel(self, task: NewTask) -> None:
        try:
            await self._send(task)
        except Exception as exc:
            # Redis is away: without the cancel the task would still run once it is back,
            # ahead of live requests. Kept (bounded) and replayed until its deadline.
            log.warning("could not cancel task %s: %s; will retry", task.id, exc)
            self._unsent[task.id] = task
            while len(self._unsent) > MAX_UNSENT_CANCELS:
                self._unsent.pop(next(iter(self._unsent)))
            if self._replaying is None or self._replaying.done():
                self._replaying = asyncio.create_task(self._replay())

    async def close(self) -> None:
        if self._replaying is not None:
            self._replaying.cancel()
            await asyncio.gather(self._replaying, return_exceptions=True)

    async def _send(self, task: NewTask) -> None:
        state = await self.store.tasks.cancel(
            task.id, task.model, time.time(), int(self.result_ttl)
        )
        if state == "running":
            await self.store.registry.publish_control({"type": "cancel", "task": task.id})

    async def _replay(self) -> None:
        delay = 0.5
        while self._unsent:
            await asyncio.sleep(delay)
            now = time.time()
            for task_id, task in list(self._unsent.items()):
                if task.deadline < now:  # its deadline ends it anyway
                    self._unsent.pop(task_id, None)
                    continue
                try:
                    await self._send(task)
                except Exception:
                    delay = min(delay * 2, 5.0)
                    break
                self._unsent.pop(task_id, None)
            else:
                delay = 0.5
