"""A Redis client with the task store and registry bound to it."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis

from sllm.kv.answer_cache import AnswerCache
from sllm.kv.client import connect
from sllm.kv.keys import Keys
from sllm.kv.registry import Registry
from sllm.kv.responses import ResponseStore
from sllm.kv.scripts import Scripts
from sllm.kv.tasks import TaskStore


@dataclass
class Store:
    client: redis.Redis
    keys: Keys
    tasks: TaskStore
    registry: Registry
    responses: ResponseStore
    answers: AnswerCache

    @classmethod
    def connect(cls, url: str, keys: Keys, *, patient: bool) -> Store:
        client = connect(url, patient=patient)
        scripts = Scripts(client)
        return cls(
            client,
            keys,
            TaskStore(client, keys, scripts),
            Registry(client, keys, scripts),
            ResponseStore(client, keys, scripts),
            AnswerCache(client, keys, scripts),
        )

    async def index(self) -> None:
        """Fill the indexes that spare the control plane a command per model (all
        instances, the models with queued tasks) from what an older version wrote;
        idempotent, once per head start."""
        models = [m.name for m in await self.registry.list_models()]
        await self.registry.index_instances(models)
        await self.tasks.index_queues(models)

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
