"""Models, instances and workers as Redis holds them, and the control channel."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import ResponseError

from sllm.kv.keys import Keys
from sllm.kv.records import TRANSITIONS, InstanceRecord, ModelRecord, WorkerRecord
from sllm.kv.scripts import Scripts


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Registry:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self._r = client
        self._k = keys
        self._s = scripts or Scripts(client)

    # -- models -----------------------------------------------------------------------

    async def save_model(self, name: str, config: dict[str, Any], *, create: bool) -> str:
        """'ok', 'exists', 'missing' or 'deleting' (see register_model.lua)."""
        return str(
            await self._s.register_model(
                keys=[self._k.model(name), self._k.models],
                args=[name, _dumps(config), time.time(), "create" if create else "update"],
            )
        )

    async def get_model(self, name: str) -> ModelRecord | None:
        h = cast("dict[str, str]", await self._r.hgetall(self._k.model(name)))
        return ModelRecord.from_hash(h) if h else None

    async def list_models(self) -> list[ModelRecord]:
        names = sorted(cast("set[str]", await self._r.smembers(self._k.models)))
        async with self._r.pipeline(transaction=False) as pipe:
            for n in names:
                pipe.hgetall(self._k.model(n))
            hashes = await pipe.execute()
        return [ModelRecord.from_hash(h) for h in hashes if h]

    async def set_unschedulable(self, name: str, reason: str) -> None:
        """Note why no worker can serve the model ("" clears it)."""
        await self._s.note_model(keys=[self._k.model(name)], args=["unschedulable", reason])

    async def set_start_failures(self, name: str, failures: dict[str, Any]) -> None:
        """Note how the model's starts failed, by worker ({} clears it)."""
        value = _dumps(failures) if failures else ""
        await self._s.note_model(keys=[self._k.model(name)], args=["start_failures", value])

    async def mark_deleting(self, name: str) -> bool:
        return bool(await self._s.delete_model(keys=[self._k.model(name)], args=[time.time()]))

    async def purge_model(self, name: str) -> bool:
        k = self._k
        return bool(
            await self._s.purge_model(
                keys=[
                    k.model(name),
                    k.models,
                    k.model_instances(name),
                    k.queue(name),
                    k.processing(name),
                ],
                args=[name],
            )
        )

    # -- instances --------------------------------------------------------------------

    async def create_instance(self, inst: InstanceRecord) -> bool:
        k = self._k
        fields = [
            "model",
            inst.model,
            "node_id",
            inst.node_id,
            "url",
            inst.url,
            "backend",
            inst.backend,
        ]
        return bool(
            await self._s.create_instance(
                keys=[k.instance(inst.id), k.model_instances(inst.model), k.model(inst.model)],
                args=[inst.id, time.time(), *fields],
            )
        )

    async def model_instances(self, model: str) -> list[InstanceRecord]:
        ids = sorted(cast("set[str]", await self._r.smembers(self._k.model_instances(model))))
        return await self._instances(ids)

    async def all_instances(self, models: list[str]) -> dict[str, list[InstanceRecord]]:
        async with self._r.pipeline(transaction=False) as pipe:
            for m in models:
                pipe.smembers(self._k.model_instances(m))
            id_sets = await pipe.execute()
        found = await self._instances([i for ids in id_sets for i in sorted(ids)])
        by_model: dict[str, list[InstanceRecord]] = {m: [] for m in models}
        for inst in found:
            by_model.setdefault(inst.model, []).append(inst)
        return by_model

    async def _instances(self, ids: list[str]) -> list[InstanceRecord]:
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(self._k.instance(i))
            hashes = await pipe.execute()
        return [InstanceRecord.from_hash(h) for h in hashes if h]

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        h = cast("dict[str, str]", await self._r.hgetall(self._k.instance(instance_id)))
        return InstanceRecord.from_hash(h) if h else None

    async def set_instance_state(self, instance_id: str, state: str, *, reason: str = "") -> bool:
        """Move an instance to ``state`` if the move is allowed, and tell every head."""
        allowed = TRANSITIONS.get(state)
        if allowed is None:
            raise ValueError(f"unknown instance state {state!r}")
        changed = bool(
            await self._s.instance_state(
                keys=[self._k.instance(instance_id)],
                args=[state, time.time(), reason, *allowed],
            )
        )
        if changed:
            await self.publish_control(
                {"type": "instance", "instance": instance_id, "state": state}
            )
        return changed

    async def instance_tasks(self, instance_id: str) -> list[str]:
        ids = cast("set[str]", await self._r.smembers(self._k.instance_tasks(instance_id)))
        return sorted(ids)

    async def remove_instance(self, instance_id: str, model: str) -> list[str]:
        """Forget the instance; returns tasks still running on it (then nothing is removed)."""
        k = self._k
        left = await self._s.remove_instance(
            keys=[k.instance(instance_id), k.model_instances(model), k.instance_tasks(instance_id)],
            args=[instance_id],
        )
        return [str(t) for t in left]

    # -- workers ----------------------------------------------------------------------

    async def next_node_id(self) -> str:
        return f"worker-{await self._r.incr(self._k.worker_seq)}"

    async def heartbeat(self, node_id: str, info: dict[str, Any]) -> str:
        """Store a worker's heartbeat: "new" on its first one, "trusted" when it clears
        a suspicion, else "known"."""
        fields: list[str] = []
        for key, value in info.items():
            fields += [key, value if isinstance(value, str) else _dumps(value)]
        found = await self._s.register_worker(
            keys=[self._k.workers, self._k.worker(node_id)],
            args=[node_id, time.time(), *fields],
        )
        return {1: "new", 2: "trusted"}.get(int(found), "known")

    async def suspect_worker(self, node_id: str, reason: str, now: float) -> bool:
        """Mark a registered worker suspected dead; True when it was not already."""
        return bool(
            await self._s.suspect_worker(keys=[self._k.worker(node_id)], args=[now, reason])
        )

    async def list_workers(self) -> list[WorkerRecord]:
        ids = sorted(cast("set[str]", await self._r.smembers(self._k.workers)))
        async with self._r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(self._k.worker(i))
            hashes = await pipe.execute()
        return [WorkerRecord.from_hash(h) for h in hashes if h]

    async def remove_worker(self, node_id: str) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.srem(self._k.workers, node_id)
            pipe.delete(self._k.worker(node_id))
            await pipe.execute()

    # -- Redis itself -----------------------------------------------------------------

    async def run_id(self) -> str:
        """The Redis server's run id: a new one means a restart, or another server."""
        info = await self._r.info("server")
        return str(info.get("run_id", ""))

    async def write_refusal(self, now: float) -> str:
        """Why Redis refuses writes (full under ``noeviction``, a read-only replica), or
        "" when it accepts them."""
        try:
            await self._r.set(self._k.write_probe, repr(now), px=10_000)
        except ResponseError as exc:
            # redis-py drops the "OOM" or "READONLY" prefix: the class says it.
            return f"{type(exc).__name__}: {exc}"
        return ""

    # -- coordination -----------------------------------------------------------------

    async def publish_control(self, event: dict[str, Any]) -> None:
        await self._r.publish(self._k.control, _dumps(event))

    async def hold_leader(self, name: str, owner: str, ttl: float) -> bool:
        """Acquire or renew the leader lock ``name``; True while ``owner`` holds it."""
        return bool(
            await self._s.leader_lock(keys=[self._k.lock(name)], args=[owner, int(ttl * 1000)])
        )
