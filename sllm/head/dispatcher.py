"""Claims tasks from each model's queue and runs them on instances.

One claim loop per deployed model. A loop claims only when some ready instance has room,
so queued work stays visible to the autoscaler, and every claim is a lease this head
renews while the worker's ``/invoke`` call runs. A worker that cannot be reached, or
that stops answering, sends the task back to the queue (requeue_task.lua decides
whether attempts remain); that instance then gets no new task from this head for a few
seconds, so the retry goes elsewhere. A task whose backend died under it may be what
killed it: its retry runs alone on its instance, so it cannot take neighbours down twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from sllm.config import DeployConfig, HeadSettings
from sllm.head.routing import pick_instance
from sllm.head.scaling import InstanceLoad
from sllm.kv import RedisError
from sllm.kv.client import BLOCK_TIMEOUT
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import Claim
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

# The worker writes a line at least this often while a task runs; silence for
# INVOKE_SILENCE seconds means the worker is gone or frozen.
INVOKE_SILENCE = 5.0
# How long a routing view of a model's instances is trusted between claims.
VIEW_TTL = 0.05
# An instance whose call just failed gets no new task from this head for this long: its
# requeued tasks must not land on it again before its worker reports it (or is pruned).
SUSPECT_SECONDS = 5.0


@dataclass
class Running:
    claim: Claim
    instance: InstanceRecord
    job: asyncio.Task[None]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: HeadSettings,
        head_id: str,
        http: aiohttp.ClientSession,
        metrics: HeadMetrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.head_id = head_id
        self.http = http
        self.metrics = metrics or HeadMetrics()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._configs: dict[str, DeployConfig] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._running: dict[str, Running] = {}
        # Instance id -> monotonic time from which it is trusted again.
        self._suspect: dict[str, float] = {}
        # Task id -> deadline, for tasks whose last attempt here ended with its backend
        # dying under it ("crashed"): the task may be what crashed it.
        self._crashed: dict[str, float] = {}
        # Instance id -> such a task, retried there alone: it cannot take its neighbours
        # down twice, so a neighbour loses at most the one attempt it shared with it.
        self._exclusive: dict[str, str] = {}

    # -- supervision ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep one claim loop per active model."""
        try:
            while True:
                try:
                    await self._sync_models()
                except RedisError as exc:
                    log.warning("dispatcher cannot read models: %s", exc)
                await asyncio.sleep(1.0)
        finally:
            await self._shutdown()

    async def _sync_models(self) -> None:
        models = {m.name: m for m in await self.store.registry.list_models() if m.state == "active"}
        for name, record in models.items():
            self._configs[name] = DeployConfig.model_validate(record.config)
            if name not in self._loops or self._loops[name].done():
                self._wakes.setdefault(name, asyncio.Event())
                self._loops[name] = asyncio.create_task(
                    self._claim_loop(name), name=f"claim:{name}"
                )
        for name in list(self._loops):
            if name not in models:
                self._loops.pop(name).cancel()
                self._configs.pop(name, None)
                self._wakes.pop(name, None)

    async def _shutdown(self) -> None:
        for job in self._loops.values():
            job.cancel()
        jobs = [r.job for r in self._running.values()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*self._loops.values(), *jobs, return_exceptions=True)

    async def on_control(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "instance":
            for wake in self._wakes.values():
                wake.set()
        elif kind == "cancel":
            running = self._running.get(str(event.get("task")))
            if running is not None:
                running.job.cancel()

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self, model: str) -> None:
        views: list[InstanceLoad] = []
        records: dict[str, InstanceRecord] = {}
        fetched = 0.0
        wake = self._wakes[model]
        while True:
            try:
                if time.monotonic() - fetched > VIEW_TTL:
                    instances = await self.store.registry.model_instances(model)
                    records = {i.id: i for i in instances}
                    views = [
                        InstanceLoad(i.id, i.state, i.outstanding, i.last_active())
                        for i in instances
                    ]
                    fetched = time.monotonic()
                config = self._configs.get(model)
                limit = config.auto_scaling_config.max_concurrency if config else 1
                target = pick_instance(self._eligible(views), limit)
                if target is None:
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), 1.0)
                    except TimeoutError:
                        pass
                    fetched = 0.0
                    continue
                task_id = await self.store.tasks.claim(model, BLOCK_TIMEOUT)
                if task_id is None:
                    fetched = 0.0
                    continue
                eligible = self._eligible(views)
                if target.id not in {v.id for v in eligible}:
                    # The target failed a call while this loop waited for a task.
                    target = pick_instance(eligible, limit)
                    if target is None:
                        await self.store.tasks.recover_claim(model, task_id)
                        fetched = 0.0
                        continue
                now = time.time()
                status, claim = await self.store.tasks.stamp(
                    task_id, model, target.id, self.head_id, now, now + self.settings.lease_seconds
                )
                if claim is None:
                    log.debug("claim of %s on %s: %s", task_id, target.id, status)
                    fetched = 0.0
                    continue
                # Count the new request locally until the next fetch sees it in Redis.
                views = [
                    InstanceLoad(v.id, v.state, v.outstanding + 1, now) if v.id == target.id else v
                    for v in views
                ]
                if self._crashed.pop(claim.task_id, None) is not None:
                    self._exclusive[target.id] = claim.task_id
                self._start(claim, records[target.id])
                # Let the new task send its /invoke before this loop sends its next
                # commands: a send costs a syscall that wakes another process, and those
                # in front of the call were on every request's path.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("claim loop of %s: %s", model, exc)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("claim loop of %s failed; restarting it", model)
                await asyncio.sleep(0.5)

    def _start(self, claim: Claim, instance: InstanceRecord) -> None:
        job = asyncio.create_task(self._run(claim, instance), name=f"task:{claim.task_id}")
        self._running[claim.task_id] = Running(claim, instance, job)
        job.add_done_callback(lambda _: self._finished(claim.task_id, instance))

    def _eligible(self, views: list[InstanceLoad]) -> list[InstanceLoad]:
        """The instances this head may send a new task to: not suspect, not running a
        retry alone."""
        now = time.monotonic()
        for instance_id, until in list(self._suspect.items()):
            if until <= now:
                del self._suspect[instance_id]
        return [v for v in views if v.id not in self._suspect and v.id not in self._exclusive]

    def _finished(self, task_id: str, instance: InstanceRecord) -> None:
        self._running.pop(task_id, None)
        if self._exclusive.get(instance.id) == task_id:
            del self._exclusive[instance.id]
        model = instance.model
        # A slot came free: a loop waiting for room should look again now.
        wake = self._wakes.get(model)
        if wake is not None:
            wake.set()

    # -- running one claim ------------------------------------------------------------

    async def _run(self, claim: Claim, instance: InstanceRecord) -> None:
        renewer = asyncio.create_task(self._renew(claim))
        try:
            if self._exclusive.get(instance.id) == claim.task_id:
                await self._wait_alone(claim, instance)
            outcome, reason = await self._invoke(claim, instance)
        except asyncio.CancelledError:
            # The client went away (or this head is stopping): the worker sees the
            # /invoke call close. A cancelled task's generation stops there and it is
            # released; any other attempt goes on, the worker holding its lease.
            raise
        finally:
            renewer.cancel()
        if outcome in ("retry", "lost", "crashed", "unreachable"):
            self.metrics.retries.labels(instance.model).inc()
        if outcome in ("lost", "crashed", "unreachable"):
            # The instance failed the call itself (a worker-reported "retry" is Redis
            # trouble, no reason to avoid it once Redis is back).
            self._suspect[instance.id] = time.monotonic() + SUSPECT_SECONDS
        if outcome == "crashed":
            now = time.time()
            self._crashed = {t: d for t, d in self._crashed.items() if d > now}
            self._crashed[claim.task_id] = claim.deadline
        if outcome in ("retry", "lost", "crashed"):
            await self._requeue(claim, reason)
        elif outcome == "unreachable":
            # Failed before requeued, so no head stamps the task on it again. Another
            # head may not know yet that the worker died (its own call was the one lost)
            # and send the retry straight to it: a call that never got through spends no
            # attempt, so that retry still gets a live instance.
            await self._mark_failed(instance, reason)
            await self._requeue(claim, reason, unsent=True)

    async def _wait_alone(self, claim: Claim, instance: InstanceRecord) -> None:
        """Let this head's other tasks on ``instance`` finish first (none start there
        meanwhile); bounded by the request's deadline."""
        others = {
            r.job
            for r in self._running.values()
            if r.instance.id == instance.id and r.claim.task_id != claim.task_id
        }
        if others:
            await asyncio.wait(others, timeout=max(0.0, claim.deadline - time.time()))

    async def _invoke(self, claim: Claim, instance: InstanceRecord) -> tuple[str, str]:
        payload = {
            "task_id": claim.task_id,
            "attempt": claim.attempt,
            "model": instance.model,
            "instance_id": instance.id,
            "endpoint": claim.endpoint,
            "body": claim.body,
            "stream": claim.stream,
            "reply_to": claim.reply_to,
            "request_id": claim.request_id,
            "deadline": claim.deadline,
            "owner": self.head_id,
            "lease_seconds": self.settings.lease_seconds,
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0, sock_read=INVOKE_SILENCE)
        try:
            async with self.http.post(
                f"{instance.url}/invoke", json=payload, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:500]
                    return "lost", f"worker answered {resp.status}: {text}"
                last: dict[str, Any] = {}
                async for line in resp.content:
                    if line.strip():
                        last = json.loads(line)
                outcome = str(last.get("outcome", ""))
                if outcome in ("done", "failed"):
                    return outcome, ""
                if outcome in ("retry", "crashed"):
                    return outcome, str(last.get("error", "the backend was unavailable"))
                return "lost", "the worker closed the call without an outcome"
        except aiohttp.ClientConnectorError as exc:
            return "unreachable", f"worker {instance.node_id} unreachable: {exc}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return "lost", f"lost the call to worker {instance.node_id}: {exc!r}"

    async def _renew(self, claim: Claim) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.store.tasks.renew(
                    claim.task_id,
                    self.head_id,
                    claim.attempt,
                    time.time() + self.settings.lease_seconds,
                )
            except RedisError as exc:
                log.warning("could not renew the lease of %s: %s", claim.task_id, exc)
                continue
            if not held:
                return

    async def _requeue(self, claim: Claim, reason: str, *, unsent: bool = False) -> None:
        try:
            result = await self.store.tasks.requeue(
                claim.task_id,
                claim.attempt,
                reason,
                time.time(),
                int(self.settings.result_ttl),
                unsent=unsent,
            )
            log.info("task %s attempt %d: %s (%s)", claim.task_id, claim.attempt, result, reason)
        except RedisError as exc:
            log.warning("could not requeue %s (its lease will): %s", claim.task_id, exc)

    async def _mark_failed(self, instance: InstanceRecord, reason: str) -> None:
        try:
            await self.store.registry.set_instance_state(instance.id, "failed", reason=reason)
        except RedisError as exc:
            log.warning("could not mark %s failed: %s", instance.id, exc)
