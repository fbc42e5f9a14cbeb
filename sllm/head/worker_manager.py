"""Workers: registration from heartbeats, confirmation, pruning, and instance start/stop."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from sllm.backends.registry import get_backend
from sllm.config import DeployConfig, HeadSettings
from sllm.head.failure_detector import FailureDetector
from sllm.head.mover import Asks, move_requests
from sllm.kv import RedisError
from sllm.kv.records import InstanceRecord, WorkerRecord
from sllm.kv.store import Store

log = logging.getLogger(__name__)

CALL_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
# The worker answers once the instance sleeps: its weights copied to host memory, and
# sleepers whose memory it needs stopped first.
SLEEP_TIMEOUT = aiohttp.ClientTimeout(total=180.0)
STOP_TIMEOUT = aiohttp.ClientTimeout(total=30.0)
# An instance the worker does not report is only presumed gone after this long, so a
# heartbeat racing a /start_instance call does not kill a fresh instance.
REPORT_GRACE = 30.0


class CachedModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = Field(min_length=1, max_length=1024)
    tier: Literal["memory", "disk"]
    bytes: int = Field(ge=0)


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    node_id: str | None = Field(default=None, max_length=128)
    url: str = Field(min_length=1, max_length=512)
    resources: dict[str, Any] = Field(default_factory=dict)
    backends: list[str] = Field(default_factory=list)
    instances: list[dict[str, Any]] = Field(default_factory=list)
    storage_path: str = ""
    # Set from the worker's SIGTERM on, or while the head asks it to drain: it finishes
    # its calls in flight and takes no more.
    draining: bool = False
    # Models it has stored (each deployed source at its fastest tier), and its idle warm
    # processes: what placement estimates a start's time from.
    cache: list[CachedModel] = Field(default_factory=list, max_length=1000)
    warm_processes: int = Field(0, ge=0, le=1024)
    # Why it cannot run each backend it does not advertise.
    unavailable: dict[str, Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=16
    )
    warm_pools: dict[str, Annotated[int, Field(ge=0, le=1024)]] = Field(
        default_factory=dict, max_length=16
    )
    # Its latest cold starts with their phases, for the dashboard.
    cold_starts: list[dict[str, Any]] = Field(default_factory=list, max_length=50)


class WorkerManager:
    def __init__(
        self,
        store: Store,
        settings: HeadSettings,
        http: aiohttp.ClientSession,
        beats: Store | None = None,
        detector: FailureDetector | None = None,
    ) -> None:
        self.store = store
        self.detector = detector
        # Heartbeats are handled on a fail-fast client: while Redis is down the worker is
        # answered at once and beats again on its own schedule, so its first beat after
        # a restart lands within one interval (not after this head's patient backoff).
        self._beats = beats or store
        # When alive() last ran, and since when this head has watched heartbeats without
        # a break (see alive()).
        self._looked = 0.0
        self._watching_since = 0.0
        self.settings = settings
        self.http = http
        self._background: set[asyncio.Task[None]] = set()
        # When the requests of each draining instance were last asked to move.
        self._drain_asks = Asks()

    @property
    def redis_url_for_workers(self) -> str:
        return self.settings.worker_redis_url or self.settings.redis_url

    async def heartbeat(self, hb: HeartbeatBody) -> dict[str, Any]:
        node_id = hb.node_id or await self._beats.registry.next_node_id()
        url = hb.url.rstrip("/")
        info = {
            "url": url,
            "resources": hb.resources,
            "backends": hb.backends,
            "instances": hb.instances,
            "storage_path": hb.storage_path,
            "cache": [c.model_dump() for c in hb.cache],
            "warm_processes": str(hb.warm_processes),
            "draining": "1" if hb.draining else "0",
            "warm_pools": hb.warm_pools,
            "unavailable": hb.unavailable,
            "cold_starts": hb.cold_starts,
        }
        seen, drain = await self._beats.registry.heartbeat(node_id, info)
        if seen == "new":
            log.info("worker %s registered at %s", node_id, hb.url)
            self.detach(self._confirm(node_id, url))
        elif seen == "trusted":
            log.warning("worker %s heartbeats again: trusted again", node_id)
        reported = {str(i.get("instance_id")) for i in hb.instances}
        if hb.draining:
            await self._drain(node_id, reported)
        unknown = await self._reconcile(node_id, reported)
        if unknown:
            log.warning(
                "worker %s runs instances the cluster does not know (Redis lost them, or "
                "they were replaced meanwhile): it stops %s",
                node_id,
                ", ".join(sorted(unknown)),
            )
        return {
            "node_id": node_id,
            "redis_url": self.redis_url_for_workers,
            "stop_instances": sorted(unknown),
            # Asked to drain (POST /workers/{node_id}/drain): the worker then beats as
            # draining, and _drain above retires its instances, as on SIGTERM.
            "drain": drain,
        }

    async def _confirm(self, node_id: str, url: str) -> None:
        body = {"node_id": node_id, "redis_url": self.redis_url_for_workers}
        try:
            async with self.http.post(f"{url}/confirmation", json=body, timeout=CALL_TIMEOUT) as r:
                if r.status != 200:
                    log.warning("worker %s refused confirmation: %s", node_id, r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The heartbeat's answer carries the same confirmation.
            log.warning("could not confirm worker %s at %s: %s", node_id, url, exc)

    async def _reconcile(self, node_id: str, reported: set[str]) -> set[str]:
        """Both ways: instances Redis places on the worker that it no longer runs are
        failed; those it runs that Redis does not know (or places elsewhere) are
        returned, for the worker to stop: nothing runs orphaned after Redis lost data."""
        now = time.time()
        known: set[str] = set()
        for inst in await self._beats.registry.instances():
            if inst.node_id == node_id:
                # An instance is recorded before its worker is asked to start it.
                known.add(inst.id)
            if (
                inst.node_id == node_id
                and inst.id not in reported
                and inst.state in ("starting", "ready", "sleeping", "waking", "migrating")
                and now - inst.created > REPORT_GRACE
            ):
                await self._beats.registry.set_instance_state(
                    inst.id, "failed", reason="the worker no longer runs it"
                )
        return reported - known

    async def _drain(self, node_id: str, instances: set[str]) -> None:
        """A worker draining (shutting down, or asked to): its instances take no new task
        from any head, the requests they run are asked to move to instances elsewhere
        (live migration), and they are retired once the tasks they run end (see
        retire)."""
        now = time.time()
        for instance_id in instances:
            if await self._beats.registry.set_instance_state(
                instance_id, "failed", reason=f"its worker {node_id} is draining"
            ):
                log.info("instance %s: worker %s is draining", instance_id, node_id)
            if self._drain_asks.due(instance_id, now):
                await self._move_away(instance_id)

    async def _move_away(self, instance_id: str) -> None:
        registry = self.store.registry
        inst = await registry.get_instance(instance_id)
        if inst is None or not inst.outstanding:
            return
        model = await registry.get_model(inst.model)
        if model is not None:
            config = DeployConfig.model_validate(model.config)
            await move_requests(self.store, inst, config, "drain", cut=self.cut_answer)

    def alive(
        self, workers: list[WorkerRecord], now: float, refused_at: float = 0.0
    ) -> tuple[list[WorkerRecord], list[str]]:
        """Workers heard from within the timeout, and the node ids of the silent ones.

        Silence counts only from when this head began watching without a break: after
        Redis was down (no heartbeat could be stored) or when it has just become leader,
        a worker gets a whole timeout to be heard before it is pruned. Nor from before
        ``refused_at``, when Redis last refused a write (a heartbeat too).
        """
        timeout = self.settings.heartbeat_timeout
        if now - self._looked > timeout / 2:
            self._watching_since = now
        self._looked = now
        since = max(self._watching_since, refused_at)
        fresh = [w for w in workers if now - max(w.last_heartbeat, since) <= timeout]
        silent = [w.node_id for w in workers if w not in fresh]
        return fresh, silent

    async def prune(self, node_id: str) -> None:
        log.warning(
            "worker %s silent for over %.0fs: pruned", node_id, self.settings.heartbeat_timeout
        )
        await self.store.registry.remove_worker(node_id)

    async def start_instance(
        self,
        worker: WorkerRecord,
        model: str,
        config: DeployConfig,
        store_peers: Sequence[str] = (),
    ) -> bool:
        """Whether the worker accepted to start a new instance of ``model`` (fetching
        its model from one of ``store_peers``, workers' URLs, if it has it stored)."""
        inst = InstanceRecord(
            id=f"{model.replace('/', '-')}-{uuid.uuid4().hex[:8]}",
            model=model,
            node_id=worker.node_id,
            url=worker.url,
            backend=config.backend,
        )
        if not await self.store.registry.create_instance(inst):
            return False
        body = {
            "instance_id": inst.id,
            "model": model,
            "backend": config.backend,
            "backend_config": config.backend_config,
            "num_gpus": config.num_gpus,
            "lora_adapters": config.lora_adapters,
            "startup_timeout": config.startup_timeout,
        }
        if store_peers:
            body["store_peers"] = list(store_peers)
        log.info("starting instance %s of %s on %s", inst.id, model, worker.node_id)
        try:
            async with self.http.post(
                f"{worker.url}/start_instance", json=body, timeout=CALL_TIMEOUT
            ) as resp:
                if resp.status >= 300:
                    reason = f"worker refused: {resp.status} {(await resp.text())[:300]}"
                    await self.store.registry.set_instance_state(inst.id, "failed", reason=reason)
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.store.registry.set_instance_state(
                inst.id, "failed", reason=f"worker unreachable: {exc}"
            )
            if isinstance(exc, aiohttp.ClientConnectorError) and self.detector is not None:
                # Not placed there again until it heartbeats: one refused start, not
                # one per pass (3,501 in 35 s before a dead worker was pruned).
                await self.detector.suspect(worker.node_id, f"/start_instance: {exc}")
            return False
        return True

    async def update_adapters(self, config: DeployConfig) -> dict[str, str]:
        """Give the running instances of ``config.model`` its new LoRA adapters, where
        the backend loads them at run time; what happened, by instance."""
        if not get_backend(config.backend).runtime_adapters:
            return {"*": "new adapters apply to instances started from now on"}
        outcome: dict[str, str] = {}
        body: dict[str, Any] = {"lora_adapters": config.lora_adapters}
        for inst in await self.store.registry.model_instances(config.model):
            if inst.state != "ready":
                outcome[inst.id] = f"{inst.state}: gets the adapters when it starts"
                continue
            try:
                async with self.http.post(
                    f"{inst.url}/update_adapters",
                    json={**body, "instance_id": inst.id},
                    timeout=aiohttp.ClientTimeout(total=150.0),
                ) as resp:
                    text = (await resp.text())[:300]
                    outcome[inst.id] = "updated" if resp.status < 300 else f"{resp.status} {text}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome[inst.id] = f"worker unreachable: {exc}"
        log.info("adapters of %s updated: %s", config.model, outcome)
        return outcome

    async def store_model(self, worker: WorkerRecord, config: DeployConfig) -> bool:
        """Ask ``worker`` to store ``config``'s model now; whether it took the request."""
        knobs = config.backend_config
        body = {
            "source": knobs["pretrained_model_name_or_path"],
            "task": knobs.get("task", "auto"),
            "trust_remote_code": bool(knobs.get("trust_remote_code", False)),
        }
        if config.backend == "onnx":  # its own copy: the model converted to ONNX
            body |= {"task": "generate", "onnx_precision": knobs.get("precision", "auto")}
        try:
            async with self.http.post(
                f"{worker.url}/store_model", json=body, timeout=CALL_TIMEOUT
            ) as resp:
                if resp.status < 300:
                    log.info("%s stores %s ahead of its first start", worker.node_id, config.model)
                    return True
                log.warning(
                    "%s refused to store %s: %s %s",
                    worker.node_id,
                    config.model,
                    resp.status,
                    (await resp.text())[:300],
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("asking %s to store %s failed: %s", worker.node_id, config.model, exc)
        return False

    async def stop_instance(self, inst: InstanceRecord) -> None:
        """Drain an idle instance: refused (False from Redis) if it took a request."""
        if not await self.store.registry.set_instance_state(inst.id, "draining", reason="idle"):
            return
        log.info("stopping idle instance %s of %s", inst.id, inst.model)
        await self._stop_on_worker(inst)
        await self.store.registry.remove_instance(inst.id, inst.model)

    async def sleep_instance(self, inst: InstanceRecord) -> None:
        """Put an idle instance to sleep instead of stopping it (refused by Redis if it
        took a request); stopped when its worker cannot put it to sleep."""
        registry = self.store.registry
        if not await registry.set_instance_state(inst.id, "sleeping", reason="idle"):
            return
        log.info("putting idle instance %s of %s to sleep", inst.id, inst.model)
        why = await self._ask(inst, "/sleep_instance", SLEEP_TIMEOUT)
        if why is None:
            log.info("instance %s of %s sleeps", inst.id, inst.model)
            return
        log.info("instance %s cannot sleep (%s): stopping it", inst.id, why)
        # Refused when it was woken or ended meanwhile: that is then in hand.
        if await registry.set_instance_state(inst.id, "draining", reason=f"idle; {why}"[:500]):
            await self._stop_on_worker(inst)
            await registry.remove_instance(inst.id, inst.model)

    async def wake_instance(self, inst: InstanceRecord) -> bool:
        """Have a sleeping instance woken; its worker reports it ready (or failed)."""
        registry = self.store.registry
        if not await registry.set_instance_state(inst.id, "waking", reason="needed"):
            return False
        why = await self._ask(inst, "/wake_instance", CALL_TIMEOUT)
        if why is not None:
            await registry.set_instance_state(inst.id, "failed", reason=f"waking: {why}"[:500])
            return False
        return True

    async def cut_answer(self, inst: InstanceRecord, task: str, to: str, reason: str) -> bool:
        """Whether the worker of ``inst`` has its backend end the non-streamed answer of
        ``task`` at its next token, to go on at instance ``to`` (live migration)."""
        body = {"instance_id": inst.id, "task_id": task, "to": to, "reason": reason}
        try:
            async with self.http.post(
                f"{inst.url}/cut_answer", json=body, timeout=CALL_TIMEOUT
            ) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not cut task %s on %s: %s", task, inst.id, exc)
            return False

    async def _ask(
        self, inst: InstanceRecord, path: str, timeout: aiohttp.ClientTimeout
    ) -> str | None:
        """POST ``path`` about ``inst`` to its worker: None when it agreed, else why not."""
        try:
            async with self.http.post(
                f"{inst.url}{path}", json={"instance_id": inst.id}, timeout=timeout
            ) as resp:
                if resp.status < 300:
                    return None
                return f"worker answered {resp.status}: {(await resp.text())[:300]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"worker unreachable: {exc!r}"

    async def retire(self, inst: InstanceRecord, reason: str) -> None:
        """Forget a failed or lost instance; the tasks it held go back to the queue.

        A task whose lease is still being renewed is left to finish: its dispatcher
        holds a live call to the worker (a worker draining on SIGTERM completes it; a
        dead one drops the call and that dispatcher requeues it; a dead head's lease
        lapses). The instance is removed on a later pass, once it runs nothing.
        """
        await self.store.registry.set_instance_state(inst.id, "failed", reason=reason)
        running = 0
        for task_id in await self.store.registry.instance_tasks(inst.id):
            now = time.time()
            record = await self.store.tasks.get(task_id)
            if record is not None and record.state == "running" and record.lease > now:
                running += 1
                continue
            result = await self.store.tasks.requeue(
                task_id, None, reason, now, int(self.settings.result_ttl)
            )
            log.info("task %s of lost instance %s: %s", task_id, inst.id, result)
        if running:
            log.debug("instance %s: %d task(s) still running; retired later", inst.id, running)
            return
        left = await self.store.registry.remove_instance(inst.id, inst.model)
        if left:
            log.warning("instance %s still lists tasks %s; retrying later", inst.id, left)
            return
        log.warning("instance %s of %s retired: %s", inst.id, inst.model, reason)
        self.detach(self._stop_on_worker(inst))

    async def _stop_on_worker(self, inst: InstanceRecord) -> None:
        why = await self._ask(inst, "/stop_instance", STOP_TIMEOUT)
        if why is not None:  # a 404: it was gone already
            log.info("stopping %s on %s: %s", inst.id, inst.node_id, why)

    def detach(self, coro: Any) -> None:
        """Run ``coro`` in the background, logging its failure."""
        job = asyncio.create_task(self._guard(coro))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    @staticmethod
    async def _guard(coro: Any) -> None:
        try:
            await coro
        except RedisError as exc:
            log.warning("background call failed: %s", exc)

    async def close(self) -> None:
        for job in self._background:
            job.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
