"""One pub/sub connection per head process: its result channel and the control channel.

Plain pub/sub drops messages while a connection is down without telling anyone, so after
every reconnect each listener receives ``RESYNC`` and reads the stored outcome instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from sllm.edge.messages import ResultMessage
from sllm.kv.keys import Keys

log = logging.getLogger(__name__)

RESYNC = "resync"
Delivery = ResultMessage | str
ControlHandler = Callable[[dict[str, Any]], Awaitable[None] | None]


class ResultBus:
    def __init__(self, client: redis.Redis, keys: Keys, head_id: str) -> None:
        self._r = client
        self._k = keys
        self.channel = keys.results(head_id)
        self._listeners: dict[str, asyncio.Queue[Delivery]] = {}
        self._control: list[ControlHandler] = []
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        # Set when messages may have been lost: control handlers hear {"type": "resync"}.
        self._missed = False

    def listen(self, task_id: str) -> asyncio.Queue[Delivery]:
        """Start collecting a task's messages; call before the task is enqueued."""
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._listeners[task_id] = queue
        return queue

    def forget(self, task_id: str) -> None:
        self._listeners.pop(task_id, None)

    def hand(self, data: str | bytes) -> None:
        """A result message for this head's listeners, from its channel or handed over
        directly (a worker's answer to this head's own dispatcher)."""
        try:
            message = ResultMessage.decode(data)
        except (ValueError, KeyError, TypeError):
            log.warning("dropped a malformed result message: %.200s", data)
            return
        queue = self._listeners.get(message.task)
        if queue is not None:
            # A batch of chunks stays one item: its reader and relay take it in one step.
            queue.put_nowait(message)

    def on_control(self, handler: ControlHandler) -> None:
        self._control.append(handler)

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="result-bus")
        await asyncio.wait_for(self.subscribed.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.05
        first = True
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self._k.control)
                # redis-py's retry reconnects a cut subscription in place and
                # resubscribes before this callback runs; what was published meanwhile
                # is lost, so listeners hear RESYNC then too.
                cast(Connection, pubsub.connection).register_connect_callback(self._reconnected)
                self.subscribed.set()
                delay = 0.05
                if not first:
                    self._resync()
                first = False
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if self._missed:
                        self._missed = False
                        await self._tell_control({"type": "resync"})
                    if msg is not None:
                        await self._deliver(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                await self._close(pubsub)
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("result subscription lost (%s); reconnecting in %.2fs", exc, delay)
                await self._close(pubsub)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _close(self, pubsub: PubSub) -> None:
        # The connection goes back to the pool: commands on it must not resync anyone.
        # (redis-py types the attribute as None: it is set on connect.)
        connection = cast("Connection | None", pubsub.connection)
        if connection is not None:
            connection.deregister_connect_callback(self._reconnected)
        await pubsub.aclose()

    def _reconnected(self, _connection: object) -> None:
        log.warning("result subscription reconnected; listeners read stored outcomes")
        self._resync()

    def _resync(self) -> None:
        for queue in self._listeners.values():
            queue.put_nowait(RESYNC)
        self._missed = True

    async def _deliver(self, channel: str, data: str) -> None:
        if channel == self.channel:
            self.hand(data)
            return
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("dropped a malformed control event: %.200s", data)
            return
        await self._tell_control(event)

    async def _tell_control(self, event: dict[str, Any]) -> None:
        for handler in self._control:
            result = handler(event)
            if result is not None:
                await result
