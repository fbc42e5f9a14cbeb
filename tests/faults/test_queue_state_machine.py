"""The task queue's Lua scripts as a state machine, against a real redis-server.

Hypothesis interleaves what the gateway, the head's dispatchers and reaper, and the
workers do to the queue (enqueue, with or without the gateway's offer to skip an empty
queue, claim, stamp, renew, finish, requeue, cancel, reap, a dispatcher dying or stalling
between its BLMOVE and its stamp, a stamp on an instance that is not ready, late calls of
stale attempts, SCRIPT FLUSH) under a simulated clock, and
after every step compares Redis with a model of what must be true: no task lost, none
held twice or listed twice, attempts within bounds, an ended task never coming back or
changing, and a stale attempt unable to touch a task that has moved on.

The regression tests at the end replay, one by one, the bugs the machine found.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sllm.config import HeadSettings
from sllm.edge.messages import ResultMessage
from sllm.head.reaper import Reaper
from sllm.kv.keys import Keys
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask, Offer

MODEL = "m"
OWNERS = ("head-a", "head-b")
LEASE = 10.0
# Redis expires task hashes on its own clock; far beyond any run, so only the
# simulated clock (the `now` every script takes) decides what has expired.
TTL = 3600
# Few tasks alive at once, so that the steps keep meeting the same tasks in new states.
MAX_LIVE_TASKS = 3
MAX_FLUSHES = 2


@dataclass(frozen=True)
class Claimed:
    """A task id a dispatcher has BLMOVEd into the processing list and not yet stamped.

    A claim never drawn again is a dispatcher that died between its BLMOVE and its stamp,
    or one that stalls until the reaper takes the claim back.
    """

    task: str
    owner: str


@dataclass(frozen=True)
class Holding:
    """One stamped attempt, kept after it goes stale so its owner can still try things."""

    task: str
    owner: str
    attempt: int
    instance: str


@dataclass
class TaskModel:
    id: str
    max_attempts: int
    state: str = "queued"  # the hash's 'state' field
    attempt: int = 0
    owner: str = ""
    instance: str = ""
    # Set while the claim is live (running, or cancelled while running): the task is then
    # in sllm:leases with this score. A 'cancelled' task without a lease has ended.
    lease: float | None = None
    # The terminal message a worker's finish stored, or the error code a script's failure
    # stored; checked when the task is first seen ended.
    result: str | None = None
    error_code: str | None = None
    # (state, result) as first seen once ended; it must never change afterwards.
    ended: tuple[str, str | None] | None = None

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed") or (
            self.state == "cancelled" and self.lease is None
        )


class QueueMachine(RuleBasedStateMachine):
    def __init__(self, redis_url: str) -> None:
        super().__init__()
        # One loop per example: redis-py's connections belong to the loop that opened them.
        self.runner = asyncio.Runner()
        self.store = Store.connect(redis_url, Keys("q"), patient=False)
        self.keys = self.store.keys
        self.reaper = Reaper(self.store, HeadSettings(lease_seconds=LEASE, result_ttl=TTL))
        self.now = 1_000_000.0
        self.model: dict[str, TaskModel] = {}
        self.queue: list[str] = []
        self.processing: list[str] = []
        self.instances: dict[str, bool] = {}  # id -> ready
        self.claims: list[Claimed] = []
        # Every attempt ever stamped: the stale ones keep trying to renew, finish, requeue.
        self.holdings: list[Holding] = []
        # The reaper's memory of unstamped claims (id -> first seen), mirrored.
        self.unstamped: dict[str, float] = {}
        self.shas = [script.sha for script in self.store.tasks._s._scripts.values()]
        self.flushed = False
        self.flushes = 0
        self.run(self.store.client.flushall())
        assert (
            self.run(self.store.registry.save_model(MODEL, {"model": MODEL}, create=True)) == "ok"
        )
        # Two ready instances, and one still starting that a stamp must refuse (the
        # dispatcher picked it from a stale view).
        for instance_id, ready in (("i1", True), ("i2", True), ("i3", False)):
            self._add_instance(instance_id, ready)

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()

    # -- helpers ----------------------------------------------------------------------

    def _add_instance(self, instance_id: str, ready: bool) -> None:
        inst = InstanceRecord(id=instance_id, model=MODEL, node_id="w", url="http://w")
        assert self.run(self.store.registry.create_instance(inst))
        if ready:
            assert self.run(self.store.registry.set_instance_state(instance_id, "ready"))
        self.instances[instance_id] = ready

    def _remove_first(self, items: list[str], task_id: str) -> None:
        # LREM key 1 id: the first occurrence only.
        if task_id in items:
            items.remove(task_id)

    def _live_tasks(self) -> list[str]:
        return [i for i, t in self.model.items() if not t.final]

    def _is_live(self, holding: Holding) -> bool:
        """Whether this attempt still holds its task's lease (running, or cancelled since)."""
        t = self.model[holding.task]
        return t.lease is not None and t.attempt == holding.attempt

    def _draw_holding(self, data: st.DataObject, *, live: bool) -> Holding:
        # Newest first: Hypothesis leans to the first choices, and the newest attempts are
        # the ones most like the live claim a stale call has to be told apart from.
        found = [h for h in reversed(self.holdings) if self._is_live(h) == live]
        return data.draw(st.sampled_from(found), label="holding")

    def _release(self, t: TaskModel) -> None:
        t.lease = None
        self._remove_first(self.processing, t.id)

    def _requeue_expected(self, t: TaskModel) -> str:
        """requeue_task.lua for the attempt that holds the task now."""
        if t.state == "cancelled" and t.lease is not None:
            self._release(t)
            t.error_code = "cancelled"
            return "cancelled"
        if t.state != "running":
            return "stale"
        self._release(t)
        if t.attempt >= t.max_attempts:
            t.state, t.error_code = "failed", "attempts_exhausted"
        else:
            t.state, t.owner, t.instance = "queued", "", ""
            self.queue.insert(0, t.id)
        return "requeued" if t.state == "queued" else "failed"

    # -- the gateway ------------------------------------------------------------------

    @precondition(lambda self: len(self._live_tasks()) < MAX_LIVE_TASKS)
    @rule(max_attempts=st.integers(1, 3))
    def enqueue(self, max_attempts: int) -> None:
        self._enqueue(max_attempts, None)

    @precondition(lambda self: len(self._live_tasks()) < MAX_LIVE_TASKS)
    @rule(
        max_attempts=st.integers(1, 3),
        owner=st.sampled_from(OWNERS),
        instance=st.sampled_from(["i1", "i2", "i3"]),
        limit=st.integers(1, 2),
    )
    def enqueue_with_an_offer(
        self, max_attempts: int, owner: str, instance: str, limit: int
    ) -> None:
        """The gateway offering its own dispatcher's pick: taken only with nothing queued,
        on an instance that is ready with room."""
        self._enqueue(max_attempts, Offer(owner, instance, limit, self.now, self.now + LEASE))

    def _enqueue(self, max_attempts: int, offer: Offer | None) -> None:
        task_id = f"t{len(self.model)}"
        task = NewTask(
            id=task_id,
            model=MODEL,
            endpoint="/v1/completions",
            body={"model": MODEL, "prompt": task_id},
            reply_to="q:results:h",
            max_attempts=max_attempts,
            created=self.now,
            deadline=self.now + 600,
        )
        got = self.run(self.store.tasks.enqueue(task, TTL, offer))
        t = self.model[task_id] = TaskModel(task_id, max_attempts)
        if offer is not None and self._takes(offer):
            self.processing.append(task_id)
            t.attempt, t.state, t.owner, t.instance = 1, "running", offer.owner, offer.instance_id
            t.lease = offer.lease_until
            assert got.claim is not None and (got.claim.task_id, got.claim.attempt) == (task_id, 1)
            self.holdings.append(Holding(task_id, offer.owner, 1, offer.instance_id))
        else:
            self.queue.append(task_id)
            assert got.claim is None
        assert (got.status, got.queue_length, got.instances) == (
            "ok",
            len(self.queue),
            len(self.instances),
        )
        # The same id for a model nobody deployed is refused and overwrites nothing (the
        # invariant would see the hash change); checked here rather than in a rule of its own
        # for the reason time_passes gives.
        ghost = NewTask(task_id, "nope", "/v1/chat/completions", {}, "x", 9, self.now, 0.0)
        assert self.run(self.store.tasks.enqueue(ghost, TTL)).status == "missing"

    def _takes(self, offer: Offer) -> bool:
        held = sum(
            1
            for t in self.model.values()
            if t.lease is not None and t.instance == offer.instance_id
        )
        return not self.queue and self.instances[offer.instance_id] and held < offer.max_concurrency

    # Every precondition below keeps a rule from running where it can change nothing: Hypothesis
    # runs whole examples of one rule (thirty cancels of one ended task, thirty clock ticks
    # with nothing leased) unless told not to.
    @precondition(lambda self: bool(self._live_tasks()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        # Live tasks first: Hypothesis leans to the first choices, and cancelling an ended
        # task (which must change nothing) needs no more than its share.
        live = sorted(self.model, key=lambda i: (self.model[i].final, i))
        task_id = data.draw(st.sampled_from(live), label="task")
        t = self.model[task_id]
        before = t.state
        got = self.run(self.store.tasks.cancel(task_id, MODEL, self.now, TTL))
        assert got == before, (got, before)
        if before == "queued":
            self._remove_first(self.queue, task_id)
            self._remove_first(self.processing, task_id)
            t.state = "cancelled"
        elif before == "running":
            t.state = "cancelled"

    # -- the head's dispatchers -------------------------------------------------------

    @precondition(lambda self: bool(self.queue))
    @rule(owner=st.sampled_from(OWNERS))
    def claim(self, owner: str) -> None:
        got = self.run(self.store.tasks.claim(MODEL))
        expected = self.queue.pop(0)
        self.processing.append(expected)
        assert got == expected, (got, expected)
        self.claims.append(Claimed(expected, owner))

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def stamp(self, data: st.DataObject) -> None:
        claim = data.draw(st.sampled_from(self.claims), label="claim")
        self.claims.remove(claim)
        instance_id = data.draw(st.sampled_from(sorted(self.instances)), label="instance")
        lease = self.now + data.draw(st.sampled_from([LEASE, 2.0]), label="lease")
        t = self.model[claim.task]
        status, got = self.run(
            self.store.tasks.stamp(claim.task, MODEL, instance_id, claim.owner, self.now, lease)
        )
        if t.state != "queued":
            expected = "gone"
            self._remove_first(self.processing, t.id)
        elif t.id not in self.processing:
            # The reaper took this claim back while its dispatcher stalled: the task is
            # queued again and belongs to whoever claims it next.
            expected = "gone"
        elif not self.instances[instance_id]:
            expected = "instance"
            self._remove_first(self.processing, t.id)
            self.queue.insert(0, t.id)
        else:
            expected = "ok"
            t.attempt += 1
            t.state, t.owner, t.instance, t.lease = "running", claim.owner, instance_id, lease
        assert status == expected, (status, expected)
        if status != "ok":
            assert got is None
            return
        assert got is not None and got.attempt == t.attempt and got.task_id == t.id
        self.holdings.append(Holding(t.id, claim.owner, t.attempt, instance_id))

    @precondition(lambda self: any(self._is_live(h) for h in self.holdings))
    @rule(data=st.data(), extra=st.sampled_from([2.0, LEASE]))
    def renew(self, data: st.DataObject, extra: float) -> None:
        self._renew(self._draw_holding(data, live=True), extra)

    @precondition(lambda self: any(self._is_live(h) for h in self.holdings))
    @rule(data=st.data())
    def requeue_after_worker_failure(self, data: st.DataObject) -> None:
        self._requeue(self._draw_holding(data, live=True))

    @precondition(lambda self: any(self._is_live(h) for h in self.holdings))
    @rule(data=st.data(), outcome=st.sampled_from(["done", "failed"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        """The worker ends the attempt it was given."""
        self._finish(self._draw_holding(data, live=True), outcome)

    @precondition(lambda self: not all(self._is_live(h) for h in self.holdings))
    @rule(data=st.data(), call=st.sampled_from(["renew", "requeue", "done", "failed"]))
    def late_call_of_a_stale_attempt(self, data: st.DataObject, call: str) -> None:
        """A dispatcher or worker still acting on an attempt that has moved on.

        Its own rule, so that runs meet these calls often: the dangerous ones are rare
        states (an attempt requeued, then cancelled in the queue, keeps its number).
        """
        holding = self._draw_holding(data, live=False)
        if call == "renew":
            self._renew(holding, LEASE)
        elif call == "requeue":
            self._requeue(holding)
        else:
            self._finish(holding, call)

    def _renew(self, holding: Holding, extra: float) -> None:
        t = self.model[holding.task]
        expected = (
            t.state == "running" and t.owner == holding.owner and t.attempt == holding.attempt
        )
        got = self.run(
            self.store.tasks.renew(holding.task, holding.owner, holding.attempt, self.now + extra)
        )
        assert got == expected, (got, expected)
        if expected:
            t.lease = self.now + extra
        # Another head cannot extend a lease it does not hold, even naming its attempt.
        other = next(o for o in OWNERS if o != t.owner)
        assert not self.run(self.store.tasks.renew(t.id, other, t.attempt, self.now + LEASE))

    def _requeue(self, holding: Holding) -> None:
        """What the dispatcher does when the worker fails or cannot be reached."""
        t = self.model[holding.task]
        expected = "stale" if t.attempt != holding.attempt else self._requeue_expected(t)
        got = self.run(
            self.store.tasks.requeue(t.id, holding.attempt, "worker unreachable", self.now, TTL)
        )
        assert got == expected, (got, expected)

    def _finish(self, holding: Holding, outcome: str) -> None:
        t = self.model[holding.task]
        kind = "done" if outcome == "done" else "error"
        message = ResultMessage(t.id, holding.attempt, 0, kind, {"by": holding.owner}).encode()
        expected = self._is_live(holding)
        got = self.run(
            self.store.tasks.finish(
                t.id, MODEL, holding.instance, holding.attempt, outcome, message, self.now, TTL
            )
        )
        assert got == expected, (got, expected)
        if expected:
            self._release(t)
            if t.state == "cancelled":
                # Every release of a cancelled task stores the cancelled outcome.
                t.error_code = "cancelled"
            else:
                t.state, t.result = outcome, message

    # -- the rest of the world --------------------------------------------------------

    @precondition(
        lambda self: bool(self.processing) or any(t.lease is not None for t in self.model.values())
    )
    @rule(
        dt=st.sampled_from([0.5, 3.0, LEASE + 1]),
        reaper=st.sampled_from(["asleep", "one pass", "passes through a lease"]),
    )
    def time_passes(self, dt: float, reaper: str) -> None:
        """The clock moves on, and the head's reaper may pass once it has.

        Left asleep, an expired lease can still be renewed or finished before it is
        reaped. Passing through a lease is what a stalled dispatcher sleeps through: an
        unstamped claim is recovered only by a pass a lease after the pass that first saw
        it, which single steps rarely line up. (One rule, not three: Hypothesis enables a
        random subset of the rules in each run, and a bug that needs several of them
        together shows up less often the more rules there are.)
        """
        self.now += dt
        if reaper == "one pass":
            self._reap_once()
        elif reaper == "passes through a lease":
            for _ in range(3):
                self._reap_once()
                self.now += LEASE / 2

    def _reap_once(self) -> None:
        expired = sorted(
            (t for t in self.model.values() if t.lease is not None and t.lease <= self.now),
            key=lambda t: (t.lease, t.id),
        )
        for t in expired:
            self._requeue_expected(t)
        seen: dict[str, float] = {}
        for task_id in list(self.processing):
            if self.model[task_id].state != "queued":
                continue
            first = self.unstamped.get(task_id, self.now)
            seen[task_id] = first
            if self.now - first >= LEASE and task_id in self.processing:
                self.processing.remove(task_id)
                self.queue.insert(0, task_id)
                seen.pop(task_id)
        self.unstamped = seen
        self.run(self.reaper.reap([MODEL], self.now))

    # Rare in life, and a run of flushes crowds out the steps a bug needs; flushing an empty
    # cache again adds nothing.
    @precondition(lambda self: not self.flushed and self.flushes < MAX_FLUSHES)
    @rule()
    def script_flush(self) -> None:
        """Redis restarted without its script cache, or an operator ran SCRIPT FLUSH."""
        self.run(self.store.client.script_flush())
        assert not any(self.run(self.store.client.script_exists(*self.shas)))
        self.flushed = True
        self.flushes += 1

    # -- what must hold after every step ----------------------------------------------

    @invariant()
    def redis_matches_the_model(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        r, k = self.store.client, self.keys
        if self.flushed:
            # The steps since went through the store's scripts only if it loaded them again.
            self.flushed = not any(await r.script_exists(*self.shas))
        queue = await r.lrange(k.queue(MODEL), 0, -1)
        processing = await r.lrange(k.processing(MODEL), 0, -1)
        leases = dict(await r.zrange(k.leases, 0, -1, withscores=True))
        # No task sits twice in the queue structures, whatever the model says.
        assert len(set(queue)) == len(queue), queue
        assert len(set(processing)) == len(processing), processing
        assert not set(queue) & set(processing), (queue, processing)
        assert queue == self.queue
        assert processing == self.processing
        assert leases == {t.id: t.lease for t in self.model.values() if t.lease is not None}

        async with r.pipeline(transaction=False) as pipe:
            for task_id in self.model:
                pipe.hgetall(k.task(task_id))
            hashes = await pipe.execute()
        for t, h in zip(self.model.values(), hashes, strict=True):
            # Never lost: every task enqueued still has its hash.
            assert h, f"task {t.id} vanished"
            state, attempt, owner = h["state"], int(h["attempt"]), h.get("owner", "")
            assert (state, attempt) == (t.state, t.attempt), (t, h)
            assert attempt <= int(h["max_attempts"]) == t.max_attempts
            if t.lease is not None:
                # Held by exactly one owner, on one instance, and not waiting in the queue.
                assert state in ("running", "cancelled") and t.id not in queue
                assert (owner, h["instance"], float(h["lease"])) == (t.owner, t.instance, t.lease)
            elif state == "queued":
                assert (t.id in queue) != (t.id in processing), t
                assert owner == ""
            else:
                # Ended: in no queue structure and ended once, for good.
                assert t.final and t.id not in queue and t.id not in processing, t
                ended = (state, h.get("result"))
                if t.ended is None:
                    t.ended = ended
                    if t.error_code is not None:
                        stored = json.loads(ended[1] or "{}")
                        assert stored["data"]["error"]["code"] == t.error_code, stored
                    else:
                        assert ended[1] == t.result, (t, ended)
                assert ended == t.ended, f"{t.id} changed after it ended: {t.ended} -> {ended}"

        for instance_id in self.instances:
            running = {
                t.id
                for t in self.model.values()
                if t.lease is not None and t.instance == instance_id
            }
            assert set(await r.smembers(k.instance_tasks(instance_id))) == running
            outstanding = int(await r.hget(k.instance(instance_id), "outstanding") or 0)
            assert outstanding == len(running), (instance_id, outstanding, running)


# A passing run takes seconds; a failing one spends most of this shrinking (real Redis
# round trips on every replay) before it prints the steps.
@pytest.mark.timeout(300)
def test_queue_scripts_keep_every_task_accounted_for(redis_url: str) -> None:
    run_state_machine_as_test(
        lambda: QueueMachine(redis_url),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            # A shared 2-core machine makes any one step slow now and then.
            suppress_health_check=[HealthCheck.too_slow],
            # No .hypothesis/ in the checkout; a failure prints its own reproduction.
            database=None,
        ),
    )


# -- what the machine found, replayed step by step --------------------------------------


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("q"), patient=False)
    assert await s.registry.save_model(MODEL, {"model": MODEL}, create=True) == "ok"
    for instance_id in ("i1", "i3"):
        inst = InstanceRecord(id=instance_id, model=MODEL, node_id="w", url="http://w")
        assert await s.registry.create_instance(inst)
    assert await s.registry.set_instance_state("i1", "ready")  # i3 stays 'starting'
    yield s
    await s.close()


def _task(task_id: str, max_attempts: int = 2) -> NewTask:
    return NewTask(task_id, MODEL, "/v1/completions", {}, "q:results:h", max_attempts, 0.0, 0.0)


async def _claim_and_stamp(store: Store, task_id: str) -> int:
    assert await store.tasks.claim(MODEL) == task_id
    status, claim = await store.tasks.stamp(task_id, MODEL, "i1", "head-a", 1.0, 11.0)
    assert status == "ok" and claim is not None
    return claim.attempt


@pytest.mark.timeout(30)
@pytest.mark.parametrize("instance", ["i1", "i3"])
async def test_a_claim_the_reaper_took_back_is_not_stamped_by_its_stalled_dispatcher(
    store: Store, instance: str
) -> None:
    """Once stamped (or pushed back for a starting instance) it ran while still queued, or
    sat in the queue twice."""
    await store.tasks.enqueue(_task("a"), TTL)
    assert await store.tasks.claim(MODEL) == "a"
    assert await store.tasks.recover_claim(MODEL, "a")
    status, claim = await store.tasks.stamp("a", MODEL, instance, "head-a", 1.0, 11.0)
    assert (status, claim) == ("gone", None)
    assert await store.tasks.queued(MODEL) == ["a"]
    assert await store.tasks.processing(MODEL) == []
    assert await store.tasks.states(["a"]) == ["queued"]


@pytest.mark.timeout(30)
async def test_cancelling_a_claimed_task_takes_it_off_the_processing_list(store: Store) -> None:
    """The reaper recovers only queued claims: with a dead dispatcher it stayed listed until
    its hash expired."""
    await store.tasks.enqueue(_task("a"), TTL)
    assert await store.tasks.claim(MODEL) == "a"
    assert await store.tasks.cancel("a", MODEL, 1.0, TTL) == "queued"
    assert await store.tasks.processing(MODEL) == []
    assert (await store.tasks.stamp("a", MODEL, "i1", "head-a", 1.0, 11.0))[0] == "gone"


@pytest.mark.timeout(30)
async def test_a_late_finish_leaves_a_task_cancelled_after_its_requeue_alone(
    store: Store,
) -> None:
    """The requeued attempt keeps its number, so a late finish of it matched and rewrote the
    ended task's result (and published into it)."""
    await store.tasks.enqueue(_task("a"), TTL)
    attempt = await _claim_and_stamp(store, "a")
    assert await store.tasks.requeue("a", attempt, "worker unreachable", 2.0, TTL) == "requeued"
    assert await store.tasks.cancel("a", MODEL, 3.0, TTL) == "queued"
    late = ResultMessage("a", attempt, 0, "done", {}).encode()
    assert not await store.tasks.finish("a", MODEL, "i1", attempt, "done", late, 4.0, TTL)
    assert await store.tasks.requeue("a", attempt, "late", 4.0, TTL) == "stale"
    assert await store.tasks.state_and_result("a") == ("cancelled", None)


@pytest.mark.timeout(30)
async def test_a_claim_cancelled_while_running_is_released_once(store: Store) -> None:
    await store.tasks.enqueue(_task("a"), TTL)
    attempt = await _claim_and_stamp(store, "a")
    assert await store.tasks.cancel("a", MODEL, 2.0, TTL) == "running"
    assert await store.tasks.requeue("a", attempt, "lease expired", 3.0, TTL) == "cancelled"
    # A second requeue (the reaper after the dispatcher) or the worker's late finish find
    # nothing left to release.
    assert await store.tasks.requeue("a", attempt, "lease expired", 4.0, TTL) == "stale"
    late = ResultMessage("a", attempt, 0, "done", {}).encode()
    assert not await store.tasks.finish("a", MODEL, "i1", attempt, "done", late, 4.0, TTL)
    state, result = await store.tasks.state_and_result("a")
    # The release stored the cancelled outcome; the late finish did not overwrite it.
    assert state == "cancelled" and result is not None
    assert ResultMessage.decode(result).data["error"]["code"] == "cancelled"
    assert (await store.registry.get_instance("i1")).outstanding == 0  # type: ignore[union-attr]
