"""The task queue: enqueue, claim with a lease, renew, finish, requeue, cancel, recover."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import redis.asyncio as redis

from sllm.edge import fast_json
from sllm.kv.keys import Keys
from sllm.kv.records import TaskRecord
from sllm.kv.scripts import Scripts


@dataclass(frozen=True)
class NewTask:
    id: str
    model: str
    endpoint: str
    body: dict[str, Any]
    reply_to: str
    max_attempts: int
    created: float
    deadline: float
    stream: bool = False
    request_id: str = ""

    @cached_property
    def body_json(self) -> str:
        return fast_json.dumps(self.body).decode()

    def fields(self) -> list[str]:
        pairs = {
            "model": self.model,
            "endpoint": self.endpoint,
            "body": self.body_json,
            "reply_to": self.reply_to,
            "attempt": "0",
            "max_attempts": str(self.max_attempts),
            "state": "queued",
            "created": repr(self.created),
            "deadline": repr(self.deadline),
            "stream": "1" if self.stream else "0",
            "request_id": self.request_id,
        }
        return [item for kv in pairs.items() for item in kv]


@dataclass(frozen=True)
class Offer:
    """A head offering to run a new task itself, on an instance its dispatcher picked."""

    owner: str
    instance_id: str
    max_concurrency: int
    now: float
    lease_until: float


@dataclass(frozen=True)
class Enqueued:
    status: str  # 'ok', 'missing', 'full', 'unschedulable' or the model's inactive state
    queue_length: int
    instances: int
    reason: str = ""  # why it is unschedulable
    # Set when the offer was taken: the task skipped the queue, stamped for the offerer.
    claim: Claim | None = None


@dataclass(frozen=True)
class Claim:
    """A stamped claim: the dispatcher now holds this attempt's lease."""

    task_id: str
    attempt: int
    endpoint: str
    body: str
    reply_to: str
    deadline: float
    stream: bool
    request_id: str
    # The stamp's time as Redis holds it (``claimed``): what tells this claim from
    # another of the same attempt number (a failover that lost the first stamp).
    claim: str = ""


class TaskStore:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts) -> None:
        self._r = client
        self._k = keys
        self._s = scripts

    async def enqueue(self, task: NewTask, ttl: int, offer: Offer | None = None) -> Enqueued:
        """Queue ``task``; or, with ``offer`` and an empty queue, claim it for the offerer
        on the offered instance if that is still ready with room. A queued task's
        ``instances`` are those awake (not sleeping)."""
        k = self._k
        keys = [
            k.model(task.model),
            k.task(task.id),
            k.queue(task.model),
            k.model_instances(task.model),
            k.queued_models,
        ]
        offered: list[Any] = ["", "", 0, 0, 0]
        if offer is not None:
            keys += [
                k.processing(task.model),
                k.leases,
                k.instance(offer.instance_id),
                k.instance_tasks(offer.instance_id),
            ]
            offered = [
                offer.owner,
                offer.instance_id,
                offer.max_concurrency,
                repr(offer.now),  # the claim: sent as the text Redis keeps
                offer.lease_until,
            ]
        status, length, instances, reason, attempt = await self._s.enqueue(
            keys=keys,
            args=[task.id, ttl, *offered, k.instance(""), k.control, task.model, *task.fields()],
        )
        claim = None
        if attempt:
            claim = Claim(
                task_id=task.id,
                attempt=int(attempt),
                endpoint=task.endpoint,
                body=task.body_json,
                reply_to=task.reply_to,
                deadline=task.deadline,
                stream=task.stream,
                request_id=task.request_id,
                claim=repr(offer.now) if offer is not None else "",
            )
        return Enqueued(str(status), int(length), int(instances), str(reason), claim)

    async def claim(self, model: str) -> str | None:
        """Move the oldest queued task into the processing list (not yet leased); None
        at once when the queue is empty. Never blocking: a blocking claim would hold a
        connection per model with a ready instance (a queue announces its first task on
        the control channel instead)."""
        task_id = await self._r.lmove(self._k.queue(model), self._k.processing(model))
        return cast("str | None", task_id)

    async def stamp(
        self, task_id: str, model: str, instance_id: str, owner: str, now: float, lease_until: float
    ) -> tuple[str, Claim | None]:
        """Stamp the lease on a claimed task: ('ok', claim), or ('gone' | 'instance', None)."""
        k = self._k
        status, attempt, *fields = await self._s.stamp_lease(
            keys=[
                k.task(task_id),
                k.leases,
                k.processing(model),
                k.instance(instance_id),
                k.instance_tasks(instance_id),
                k.queue(model),
            ],
            args=[task_id, owner, repr(now), lease_until, instance_id, k.control, model],
        )
        if status != "ok":
            return str(status), None
        endpoint, body, reply_to, deadline, stream, request_id = fields
        claim = Claim(
            task_id=task_id,
            attempt=int(attempt),
            endpoint=endpoint,
            body=body,
            reply_to=reply_to,
            deadline=float(deadline),
            stream=stream == "1",
            request_id=request_id,
            claim=repr(now),
        )
        return "ok", claim

    async def renew(
        self, task_id: str, owner: str, attempt: int, lease_until: float, claim: str = ""
    ) -> bool:
        return bool(
            await self._s.renew_lease(
                keys=[self._k.task(task_id), self._k.leases],
                args=[task_id, owner, attempt, lease_until, claim],
            )
        )

    async def finish(
        self,
        task_id: str,
        model: str,
        instance_id: str,
        attempt: int,
        state: str,
        message: str,
        now: float,
        ttl: int,
        claim: str = "",
        *,
        publish: bool = True,
    ) -> bool:
        """Store and publish (unless not ``publish``: its reader takes it another way)
        the terminal message of this attempt (of this claim, when given); False if it is
        stale."""
        k = self._k
        return bool(
            await self._s.finish_task(
                keys=[
                    k.task(task_id),
                    k.leases,
                    k.processing(model),
                    k.instance(instance_id),
                    k.instance_tasks(instance_id),
                ],
                args=[task_id, attempt, state, message, now, ttl, claim, int(publish)],
            )
        )

    async def requeue(
        self,
        task_id: str,
        attempt: int | None,
        reason: str,
        now: float,
        ttl: int,
        *,
        unsent: bool = False,
    ) -> str:
        """Send a claimed task back to its queue (or fail it when attempts are spent).

        ``attempt`` None means "whatever attempt holds it now" (the reaper's view).
        ``unsent``: the call never reached a worker, so the attempt does not count.
        """
        record = await self.get(task_id)
        if record is None:
            await self._r.zrem(self._k.leases, task_id)
            return "gone"
        k = self._k
        expected = record.attempt if attempt is None else attempt
        return str(
            await self._s.requeue_task(
                keys=[
                    k.task(task_id),
                    k.leases,
                    k.processing(record.model),
                    k.queue(record.model),
                    k.instance(record.instance),
                    k.instance_tasks(record.instance),
                    k.model(record.model),
                ],
                args=[
                    task_id,
                    expected,
                    now,
                    reason,
                    ttl,
                    "unsent" if unsent else "",
                    k.control,
                    record.model,
                ],
            )
        )

    async def cancel(self, task_id: str, model: str, now: float, ttl: int) -> str | None:
        k = self._k
        state = await self._s.cancel_task(
            keys=[k.task(task_id), k.queue(model), k.processing(model)], args=[task_id, now, ttl]
        )
        return str(state) if state else None

    async def fail_queued(
        self, model: str, task_id: str, message: str, code: str, now: float, ttl: int
    ) -> bool:
        return bool(
            await self._s.fail_queued(
                keys=[self._k.queue(model), self._k.task(task_id)],
                args=[task_id, message, code, now, ttl],
            )
        )

    async def recover_claim(self, model: str, task_id: str) -> bool:
        k = self._k
        return bool(
            await self._s.recover_claim(
                keys=[k.task(task_id), k.processing(model), k.queue(model)],
                args=[task_id, k.control, model],
            )
        )

    async def attempt(self, task_id: str) -> int | None:
        """The task's current attempt (one field, on the hot path); None: no such task."""
        value = await self._r.hget(self._k.task(task_id), "attempt")
        return int(value) if value is not None else None

    async def claimed(self, task_id: str) -> str | None:
        """The claim (stamp time) of the task's current attempt; None: no such task or
        never stamped."""
        return cast("str | None", await self._r.hget(self._k.task(task_id), "claimed"))

    async def get(self, task_id: str) -> TaskRecord | None:
        h = cast("dict[str, str]", await self._r.hgetall(self._k.task(task_id)))
        return TaskRecord.from_hash(task_id, h) if h else None

    async def ack(self, task_id: str, attempt: int, read: int) -> None:
        """The client of a streamed task has read ``read`` chunks of ``attempt``."""
        await self._s.ack_task(keys=[self._k.task(task_id)], args=[attempt, read])

    async def acked(self, task_id: str, attempt: int) -> int:
        """Chunks of ``attempt`` its client has read, as last noted (0: none yet)."""
        value = cast("str | None", await self._r.hget(self._k.task(task_id), "acked"))
        noted, _, read = (value or "").partition(":")
        return int(read) if noted == str(attempt) and read.isdigit() else 0

    async def state_and_result(self, task_id: str) -> tuple[str | None, str | None]:
        state, result = await self._r.hmget(self._k.task(task_id), "state", "result")
        return cast("str | None", state), cast("str | None", result)

    async def expired_leases(self, now: float, limit: int = 100) -> list[str]:
        ids = await self._r.zrangebyscore(self._k.leases, "-inf", now, start=0, num=limit)
        return cast("list[str]", ids)

    async def queued(self, model: str) -> list[str]:
        return cast("list[str]", await self._r.lrange(self._k.queue(model), 0, -1))

    async def processing(self, model: str) -> list[str]:
        return cast("list[str]", await self._r.lrange(self._k.processing(model), 0, -1))

    async def queued_models(self) -> dict[str, tuple[int, int]]:
        """The models with queued or claimed tasks: their queue's and processing
        list's lengths (one command, whatever the number of models deployed)."""
        k = self._k
        flat = await self._s.queued_models(
            keys=[k.queued_models], args=[k.queue(""), k.processing("")]
        )
        return {str(flat[i]): (int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)}

    async def queue_lengths(self, models: list[str]) -> dict[str, int]:
        active = await self.queued_models()
        return {m: active.get(m, (0, 0))[0] for m in models}

    async def index_queues(self, models: list[str]) -> None:
        """Note those of ``models`` with queued or claimed tasks in the set that
        queued_models reads: a head starting on a Redis an older version filled."""
        k = self._k
        async with self._r.pipeline(transaction=False) as pipe:
            for m in models:
                pipe.llen(k.queue(m))
                pipe.llen(k.processing(m))
            lengths = await pipe.execute()
        busy = [m for i, m in enumerate(models) if lengths[2 * i] or lengths[2 * i + 1]]
        if busy:
            await self._r.sadd(k.queued_models, *busy)

    async def oldest_queued(self, models: list[str]) -> dict[str, float]:
        """When the oldest waiting task of each model was created (models with an
        empty queue are left out)."""
        async with self._r.pipeline(transaction=False) as pipe:
            for m in models:
                pipe.lindex(self._k.queue(m), 0)
            heads: list[str | None] = await pipe.execute()
        waiting = [(m, t) for m, t in zip(models, heads, strict=True) if t]
        async with self._r.pipeline(transaction=False) as pipe:
            for _, task_id in waiting:
                pipe.hget(self._k.task(task_id), "created")
            created: list[str | None] = await pipe.execute()
        return {m: float(c) for (m, _), c in zip(waiting, created, strict=True) if c}

    async def publish(self, channel: str, message: str) -> None:
        """Send one result message to the gateway listening on ``channel``."""
        await self._r.publish(channel, message)

    async def streamed(self, task_ids: list[str]) -> list[bool]:
        """Whether each task is a streamed request."""
        async with self._r.pipeline(transaction=False) as pipe:
            for t in task_ids:
                pipe.hget(self._k.task(t), "stream")
            found: list[str | None] = await pipe.execute()
        return [flag == "1" for flag in found]

    async def states(self, task_ids: list[str]) -> list[str | None]:
        async with self._r.pipeline(transaction=False) as pipe:
            for t in task_ids:
                pipe.hget(self._k.task(t), "state")
            found: list[str | None] = await pipe.execute()
        return found
