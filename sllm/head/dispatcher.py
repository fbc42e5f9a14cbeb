"""Claims tasks from each model's queue and runs them on instances.

One claim loop per deployed model. A loop claims only when some ready instance has room,
so queued work stays visible to the autoscaler, and every claim is a lease this head
renews while the worker's ``/invoke`` call runs. A new request that finds its model's
queue empty skips it: the gateway offers it to this dispatcher's pick (``offer``), the
enqueue script claims and stamps it in the same round trip when that instance still has
room, and the dispatcher runs it (``adopt``) like any claim. A worker that cannot be
reached, or that stops answering, sends the task back to the queue (requeue_task.lua
decides whether attempts remain); that instance then gets no new task from this head for
a few seconds, so the retry goes elsewhere. A task whose backend died under it may be what
killed it: its retry runs alone on its instance, so it cannot take neighbours down twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sllm.config import DeployConfig, HeadSettings
from sllm.edge import fast_json
from sllm.edge.hop_client import HopClient
from sllm.edge.messages import encode_raw
from sllm.head import worker_call
from sllm.head.deployed import DeployConfigs
from sllm.head.empty_queues import EmptyQueues
from sllm.head.failure_detector import FailureDetector
from sllm.head.model_view import ModelView
from sllm.head.renewals import Running, renew_leases
from sllm.head.routing import pick_instance
from sllm.head.scaling import InstanceLoad
from sllm.kv import RedisError
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import Claim, Offer
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

# An instance whose call just failed gets no new task from this head for this long: its
# requeued tasks must not land on it again before its worker reports it (or is pruned).
SUSPECT_SECONDS = 5.0
# A loop whose model's instances are all busy looks again this often: tasks other heads
# ran may have ended.
BUSY_RECHECK = 1.0
# An idle loop waits for the control channel's events ('instance', 'queued', and
# 'resync' after a lost subscription); these are its safety nets, so their cost (a few
# commands per model) is spread thin over many models: an empty queue beside a ready
# instance, and a model with no instance at all (most of a large deployment).
EMPTY_RECHECK = 30.0
UNUSED_RECHECK = 300.0


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: HeadSettings,
        head_id: str,
        hop: HopClient,
        metrics: HeadMetrics | None = None,
        detector: FailureDetector | None = None,
        answers: Callable[[str | bytes], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.head_id = head_id
        self.hop = hop
        self.metrics = metrics or HeadMetrics()
        self.detector = detector
        # Where an answer a worker hands back goes: its client waits on this head.
        self.answers = answers
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._configs: dict[str, DeployConfig] = {}
        self._views: dict[str, ModelView] = {}
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
        self._empty = EmptyQueues()
        self._stopping = False
        self._deployed = DeployConfigs()
        # The models' version the claim loops were last synced with.
        self._synced: str | None = None
        # Requeues of offered tasks this head could not run (short: awaited at shutdown).
        self._background: set[asyncio.Task[None]] = set()

    # -- supervision ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep one claim loop per active model, and the leases of what runs here."""
        renewals = asyncio.create_task(
            renew_leases(self.store, self.settings, self.head_id, self._running),
            name="lease-renewals",
        )
        try:
            while True:
                try:
                    await self._sync_models()
                except RedisError as exc:
                    log.warning("dispatcher cannot read models: %s", exc)
                await asyncio.sleep(1.0)
        finally:
            renewals.cancel()
            await self._shutdown()

    async def _sync_models(self) -> None:
        version, records = await self.store.registry.read_models()
        if version is not None and version == self._synced:
            return  # the same models, and every claim loop still runs
        self._synced = version
        models = {m.name: m for m in records if m.state == "active"}
        self._deployed.keep(models)
        for name, record in models.items():
            self._configs[name] = self._deployed.of(record)
            if name not in self._loops or self._loops[name].done():
                self._wakes.setdefault(name, asyncio.Event())
                self._views.setdefault(name, ModelView())
                self._loops[name] = asyncio.create_task(
                    self._claim_loop(name), name=f"claim:{name}"
                )
                self._loops[name].add_done_callback(self._loop_ended)
        for name in list(self._loops):
            if name not in models:
                self._loops.pop(name).cancel()
                self._configs.pop(name, None)
                self._wakes.pop(name, None)
                self._empty.drop(name)
                view = self._views.pop(name, None)
                if view is not None and view.refresh is not None:
                    view.refresh.cancel()

    def _loop_ended(self, _: asyncio.Task[None]) -> None:
        self._synced = None  # the next sync starts it again if its model is still there

    async def _shutdown(self) -> None:
        self._stopping = True
        for job in self._loops.values():
            job.cancel()
        refreshes = [v.refresh for v in self._views.values() if v.refresh is not None]
        for job in refreshes:
            job.cancel()
        jobs = [r.job for r in self._running.values()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(
            *self._loops.values(), *refreshes, *jobs, *self._background, return_exceptions=True
        )

    async def on_control(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        model = event.get("model")
        if kind == "resync":
            self._empty.forget()  # 'queued' events may have been lost
        if kind in ("instance", "resync"):
            # An event names its model; one from an older head, or lost ones, all.
            for name in [model] if kind == "instance" and model else list(self._views):
                view, wake = self._views.get(name), self._wakes.get(name)
                if view is not None and wake is not None:
                    view.fetched = 0.0
                    wake.set()
        elif kind == "queued":
            self._empty.queued(str(model))
            wake = self._wakes.get(str(model))
            if wake is not None:
                wake.set()
        elif kind == "cancel":
            running = self._running.get(str(event.get("task")))
            if running is not None:
                running.job.cancel()

    # -- claiming ---------------------------------------------------------------------

    def offer(self, model: str, to: str | None = None) -> Offer | None:
        """An offer to run a new task of ``model`` on this head's pick of its instances
        (``to``: on that one only, a migration's destination), for the gateway's
        enqueue; None when this head has no such instance with room for it."""
        view, config = self._views.get(model), self._configs.get(model)
        if view is None or config is None or self._stopping:
            return None
        if view.stale() and (view.refresh is None or view.refresh.done()):
            # Picked from the view as it is; the next offer sees the fresh one.
            view.refresh = asyncio.create_task(self._refresh(model, view))
        limit = config.auto_scaling_config.max_concurrency
        eligible = self._eligible(view.loads)
        if to is not None:
            eligible = [v for v in eligible if v.id == to]
        target = pick_instance(eligible, limit)
        if target is None:
            return None
        now = time.time()
        return Offer(self.head_id, target.id, limit, now, now + self.settings.lease_seconds)

    def adopt(self, claim: Claim, model: str, instance_id: str) -> None:
        """Run a task the enqueue claimed for this head on the instance ``offer`` named;
        back to the queue, its attempt unspent, when this head can no longer run it."""
        view = self._views.get(model)
        instance = view.records.get(instance_id) if view is not None else None
        if view is None or instance is None or self._stopping:
            reason = f"this head no longer runs tasks on {instance_id}"
            self._detach(self._requeue(claim, reason, unsent=True))
            return
        view.count(instance_id, +1, time.time())
        self._start(claim, instance)

    def _detach(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _refresh(self, model: str, view: ModelView) -> None:
        try:
            await self._fetch(model, view)
        except RedisError as exc:
            log.debug("could not refresh the instances of %s: %s", model, exc)

    async def _fetch(self, model: str, view: ModelView) -> None:
        instances = await self.store.registry.model_instances(model)
        view.records = {i.id: i for i in instances}
        view.loads = [
            InstanceLoad(i.id, i.state, i.outstanding, i.last_active()) for i in instances
        ]
        view.fetched = time.monotonic()

    async def _claim_loop(self, model: str) -> None:
        view = self._views[model]
        wake = self._wakes[model]
        while True:
            try:
                # Cleared before looking: an event from here on ends the waits below.
                wake.clear()
                if view.stale():
                    await self._fetch(model, view)
                config = self._configs.get(model)
                limit = config.auto_scaling_config.max_concurrency if config else 1
                target = pick_instance(self._eligible(view.loads), limit)
                if target is None:
                    # Instance events tell of new, woken and failed instances; a ready
                    # one's room comes back unannounced when others' tasks end.
                    busy = any(v.state == "ready" for v in view.loads)
                    await self._idle(wake, BUSY_RECHECK if busy else UNUSED_RECHECK)
                    view.fetched = 0.0
                    continue
                task_id = None
                if model not in self._empty:
                    before = self._empty.before_claim(model)
                    task_id = await self.store.tasks.claim(model)
                    if task_id is None:
                        self._empty.found_empty(model, before)
                if task_id is None:
                    if not await self._idle(wake, EMPTY_RECHECK):
                        self._empty.forget(model)  # the safety net: look again
                    continue
                eligible = self._eligible(view.loads)
                if pick_instance([v for v in eligible if v.id == target.id], limit) is None:
                    # The target failed a call, or offered tasks filled it, while this loop
                    # waited for a task.
                    target = pick_instance(eligible, limit)
                    if target is None:
                        await self.store.tasks.recover_claim(model, task_id)
                        view.fetched = 0.0
                        continue
                now = time.time()
                status, claim = await self.store.tasks.stamp(
                    task_id, model, target.id, self.head_id, now, now + self.settings.lease_seconds
                )
                if claim is None:
                    log.debug("claim of %s on %s: %s", task_id, target.id, status)
                    view.fetched = 0.0
                    continue
                # Count the new request locally until the next fetch sees it in Redis.
                view.count(target.id, +1, now)
                if self._crashed.pop(claim.task_id, None) is not None:
                    self._exclusive[target.id] = claim.task_id
                self._start(claim, view.records[target.id])
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

    @staticmethod
    async def _idle(wake: asyncio.Event, timeout: float) -> bool:
        """Wait for ``wake`` (not cleared here) or ``timeout``, spread by up to a
        half so that the loops of many models do not look again together; whether
        woken."""
        try:
            await asyncio.wait_for(wake.wait(), timeout * random.uniform(0.5, 1.0))
        except TimeoutError:
            return False
        return True

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
        view = self._views.get(model)
        if view is not None:
            view.count(instance.id, -1)
        # A slot came free: a loop waiting for room should look again now, unless
        # nothing waits for it.
        wake = self._wakes.get(model)
        if wake is not None and model not in self._empty:
            wake.set()

    # -- running one claim ------------------------------------------------------------

    async def _run(self, claim: Claim, instance: InstanceRecord) -> None:
        try:
            if self._exclusive.get(instance.id) == claim.task_id:
                await self._wait_alone(claim, instance)
            outcome, reason = await self._invoke(claim, instance)
        except asyncio.CancelledError:
            # The client went away (or this head is stopping): the worker sees the
            # /invoke call close. A cancelled task's generation stops there and it is
            # released; any other attempt goes on, the worker holding its lease.
            raise
        if outcome in ("retry", "lost", "silent", "crashed", "unreachable", "unsent"):
            self.metrics.retries.labels(instance.model).inc()
        if outcome in ("lost", "silent", "crashed", "unreachable", "unsent"):
            # The instance failed the call itself (a worker-reported "retry" is Redis
            # trouble, no reason to avoid it once Redis is back).
            until = time.monotonic() + SUSPECT_SECONDS
            self._suspect[instance.id] = until
            if outcome != "crashed":
                # The call to the worker itself failed: it may be dead, and a retry sent to
                # another of its instances would spend the request's last attempt there.
                for view in self._views.values():
                    for record in view.records.values():
                        if record.node_id == instance.node_id:
                            self._suspect[record.id] = until
        if outcome == "crashed":
            now = time.time()
            self._crashed = {t: d for t, d in self._crashed.items() if d > now}
            self._crashed[claim.task_id] = claim.deadline
        if outcome in ("silent", "unsent") and self.detector is not None:
            # A worker that does not answer at all (partitioned from this head, or its
            # machine gone): every head should keep the retry away from it, not only
            # this one; its probes and heartbeats decide from here.
            await self.detector.suspect(instance.node_id, reason)
        if outcome in ("retry", "lost", "silent", "crashed"):
            await self._requeue(claim, reason)
        elif outcome == "unsent":
            # The call never got through: the retry spends no attempt.
            await self._requeue(claim, reason, unsent=True)
        elif outcome == "unreachable":
            # Failed before requeued, so no head stamps the task on it again. Another
            # head may not know yet that the worker died (its own call was the one lost)
            # and send the retry straight to it: a call that never got through spends no
            # attempt, so that retry still gets a live instance.
            await self._mark_failed(instance, reason)
            await self._requeue(claim, reason, unsent=True)
            if self.detector is not None:
                await self.detector.suspect(instance.node_id, reason)

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
            "claim": claim.claim,
            "lease_seconds": self.settings.lease_seconds,
            "stall_seconds": self.settings.stream_stall_timeout,
        }
        # A stream whose client waits here: its chunks come back in the answer.
        mine = self.answers is not None and claim.reply_to == self.store.keys.results(self.head_id)
        return await worker_call.invoke(
            self.hop, instance, fast_json.dumps(payload), claim.stream and mine, self.answers
        )

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
            if result == "requeued":
                # Its gateway looks now: a stream with output goes on, not waits.
                nudge = encode_raw(claim.task_id, claim.attempt, -1, "requeued", "null")
                await self.store.tasks.publish(claim.reply_to, nudge)
        except RedisError as exc:
            log.warning("could not requeue %s (its lease will): %s", claim.task_id, exc)

    async def _mark_failed(self, instance: InstanceRecord, reason: str) -> None:
        try:
            await self.store.registry.set_instance_state(instance.id, "failed", reason=reason)
        except RedisError as exc:
            log.warning("could not mark %s failed: %s", instance.id, exc)
