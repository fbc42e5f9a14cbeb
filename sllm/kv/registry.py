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

# The fields every write to a worker's record changes (register_worker.lua,
# suspect_worker.lua, drain_worker.lua): what tells a cached record from a stale one.
_WORKER_STAMP = ("last_heartbeat", "suspect", "suspect_since", "drain")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Registry:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self._r = client
        self._k = keys
        self._s = scripts or Scripts(client)
        # The models as last read, and the version they were read at: every pass of the
        # autoscaler, the dispatcher and each heartbeat lists them, and with a thousand
        # models deployed a read costs a thousand commands.
        self._models: tuple[str, list[ModelRecord]] | None = None
        # Node id -> the record's stamp (see _WORKER_STAMP) and the record as parsed.
        self._workers: dict[str, tuple[tuple[str | None, ...], WorkerRecord]] = {}

    # -- models -----------------------------------------------------------------------

    async def save_model(self, name: str, config: dict[str, Any], *, create: bool) -> str:
        """'ok', 'exists', 'missing' or 'deleting' (see register_model.lua)."""
        return str(
            await self._s.register_model(
                keys=[self._k.model(name), self._k.models, self._k.models_version],
                args=[name, _dumps(config), time.time(), "create" if create else "update"],
            )
        )

    async def get_model(self, name: str) -> ModelRecord | None:
        h = cast("dict[str, str]", await self._r.hgetall(self._k.model(name)))
        return ModelRecord.from_hash(h) if h else None

    async def list_models(self) -> list[ModelRecord]:
        """Every model, as one round trip reads them while none changed (shared
        records: callers must not change them)."""
        return (await self.read_models())[1]

    async def read_models(self) -> tuple[str | None, list[ModelRecord]]:
        """Every model (as list_models) and the version read with them: equal versions,
        equal records. None where Redis keeps no version (an older sllm filled it)."""
        born, n = cast(
            "list[str | None]", await self._r.hmget(self._k.models_version, ["born", "n"])
        )
        # Read before the records: a change while they are read is read again next time.
        version = None if born is None else f"{born}:{n}"
        if version is not None and self._models is not None and self._models[0] == version:
            return version, list(self._models[1])
        names = sorted(cast("set[str]", await self._r.smembers(self._k.models)))
        async with self._r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._k.model(name))
            hashes = await pipe.execute()
        records = [ModelRecord.from_hash(h) for h in hashes if h]
        self._models = None if version is None else (version, records)
        return version, list(records)

    async def set_unschedulable(self, name: str, reason: str) -> None:
        """Note why no worker can serve the model ("" clears it)."""
        await self._s.note_model(
            keys=[self._k.model(name), self._k.models_version], args=["unschedulable", reason]
        )

    async def set_start_failures(self, name: str, failures: dict[str, Any]) -> None:
        """Note how the model's starts failed, by worker ({} clears it)."""
        value = _dumps(failures) if failures else ""
        await self._s.note_model(
            keys=[self._k.model(name), self._k.models_version], args=["start_failures", value]
        )

    async def mark_deleting(self, name: str) -> bool:
        return bool(
            await self._s.delete_model(
                keys=[self._k.model(name), self._k.models_version], args=[time.time()]
            )
        )

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
                    k.models_version,
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
                keys=[
                    k.instance(inst.id),
                    k.model_instances(inst.model),
                    k.model(inst.model),
                    k.instances,
                ],
                args=[inst.id, time.time(), *fields],
            )
        )

    async def model_instances(self, model: str) -> list[InstanceRecord]:
        ids = sorted(cast("set[str]", await self._r.smembers(self._k.model_instances(model))))
        return await self._instances(ids)

    async def instances(self) -> list[InstanceRecord]:
        """Every instance, whatever its model."""
        ids = sorted(cast("set[str]", await self._r.smembers(self._k.instances)))
        found = await self._instances(ids)
        # Ids are never reused, and an instance's record and its place in the index are
        # written together: an id without a record was removed (or indexed after it).
        gone = set(ids) - {i.id for i in found}
        if gone:
            await self._r.srem(self._k.instances, *gone)
        return found

    async def all_instances(self, models: list[str]) -> dict[str, list[InstanceRecord]]:
        """Every instance by model (``models`` are keys even without one)."""
        by_model: dict[str, list[InstanceRecord]] = {m: [] for m in models}
        for inst in await self.instances():
            by_model.setdefault(inst.model, []).append(inst)
        return by_model

    async def index_instances(self, models: list[str]) -> None:
        """Add the instances of ``models`` to the index of all instances: a head
        starting on a Redis that an older version filled (which kept no index)."""
        if models:
            await self._r.sunionstore(
                self._k.instances, [self._k.instances, *map(self._k.model_instances, models)]
            )

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
        model = await self._s.instance_state(
            keys=[self._k.instance(instance_id)], args=[state, time.time(), reason, *allowed]
        )
        if model == 0:
            return False
        # The model lets each head wake that model's claim loop alone.
        await self.publish_control(
            {"type": "instance", "instance": instance_id, "state": state, "model": model}
        )
        return True

    async def instance_tasks(self, instance_id: str) -> list[str]:
        ids = cast("set[str]", await self._r.smembers(self._k.instance_tasks(instance_id)))
        return sorted(ids)

    async def remove_instance(self, instance_id: str, model: str) -> list[str]:
        """Forget the instance; returns tasks still running on it (then nothing is removed)."""
        k = self._k
        left = await self._s.remove_instance(
            keys=[
                k.instance(instance_id),
                k.model_instances(model),
                k.instance_tasks(instance_id),
                k.instances,
            ],
            args=[instance_id],
        )
        return [str(t) for t in left]

    # -- workers ----------------------------------------------------------------------

    async def next_node_id(self) -> str:
        return f"worker-{await self._r.incr(self._k.worker_seq)}"

    async def heartbeat(self, node_id: str, info: dict[str, Any]) -> tuple[str, bool]:
        """Store a worker's heartbeat: "new" on its first one, "trusted" when it clears
        a suspicion, else "known"; and whether it was asked to drain."""
        fields: list[str] = []
        for key, value in info.items():
            fields += [key, value if isinstance(value, str) else _dumps(value)]
        seen, drain = await self._s.register_worker(
            keys=[self._k.workers, self._k.worker(node_id)],
            args=[node_id, time.time(), *fields],
        )
        return {1: "new", 2: "trusted"}.get(int(seen), "known"), bool(int(drain))

    async def drain_worker(self, node_id: str, drain: bool) -> bool:
        """Ask a worker to drain, or to take work again; False when it is unknown."""
        done = await self._s.drain_worker(keys=[self._k.worker(node_id)], args=[int(drain)])
        return bool(done)

    async def suspect_worker(self, node_id: str, reason: str, now: float) -> bool:
        """Mark a registered worker suspected dead; True when it was not already."""
        return bool(
            await self._s.suspect_worker(keys=[self._k.worker(node_id)], args=[now, reason])
        )

    async def worker_count(self) -> int:
        return int(await self._r.scard(self._k.workers))

    async def worker_addresses(self) -> list[tuple[str, str, bool]]:
        """Each worker's node id, URL and whether it is suspected: what probing needs,
        without reading and parsing whole heartbeats every second."""
        ids = sorted(cast("set[str]", await self._r.smembers(self._k.workers)))
        async with self._r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hmget(self._k.worker(i), ["url", "suspect"])
            found: list[list[str | None]] = await pipe.execute()
        return [
            (node_id, url, bool(suspect))
            for node_id, (url, suspect) in zip(ids, found, strict=True)
            if url is not None
        ]

    async def list_workers(self) -> list[WorkerRecord]:
        """Every worker. A worker's heartbeat (resources, cache, cold starts: JSON) is
        read and parsed again only when a write changed it: the autoscaler lists the
        workers every second, and each beats every 15 (shared records: callers must
        not change them)."""
        ids = sorted(cast("set[str]", await self._r.smembers(self._k.workers)))
        async with self._r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hmget(self._k.worker(i), list(_WORKER_STAMP))
            stamps = [tuple(s) for s in await pipe.execute()]
        # The stamp is read before the record: a write in between is read again next time.
        stale = [
            (i, stamp)
            for i, stamp in zip(ids, stamps, strict=True)
            if stamp[0] is not None and self._workers.get(i, ((),))[0] != stamp
        ]
        async with self._r.pipeline(transaction=False) as pipe:
            for i, _ in stale:
                pipe.hgetall(self._k.worker(i))
            hashes = await pipe.execute()
        for (i, stamp), h in zip(stale, hashes, strict=True):
            if h:
                self._workers[i] = (stamp, WorkerRecord.from_hash(h))
        self._workers = {i: self._workers[i] for i in ids if i in self._workers}
        return [record for _, record in self._workers.values()]

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
