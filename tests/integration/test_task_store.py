"""The queue's Lua scripts against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis as redis_sync

from sllm.edge.messages import ResultMessage
from sllm.kv.keys import Keys
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask, Offer

MODEL = "m1"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("t"), patient=False)
    yield s
    await s.close()


def new_task(task_id: str, *, max_attempts: int = 2, reply_to: str = "t:results:h") -> NewTask:
    now = time.time()
    return NewTask(
        id=task_id,
        model=MODEL,
        endpoint="/v1/completions",
        body={"model": MODEL, "prompt": "hi"},
        reply_to=reply_to,
        max_attempts=max_attempts,
        created=now,
        deadline=now + 60,
    )


async def deploy_with_ready_instance(store: Store, instance_id: str = "i1") -> None:
    assert await store.registry.save_model(MODEL, {"model": MODEL}, create=True) == "ok"
    inst = InstanceRecord(id=instance_id, model=MODEL, node_id="w1", url="http://w1")
    assert await store.registry.create_instance(inst)
    assert await store.registry.set_instance_state(instance_id, "ready")


async def claim_and_stamp(store: Store, instance_id: str = "i1", lease: float = 30.0):
    task_id = await store.tasks.claim(MODEL)
    assert task_id is not None
    now = time.time()
    return await store.tasks.stamp(task_id, MODEL, instance_id, "head-a", now, now + lease)


async def test_enqueue_refuses_unknown_and_deleted_models(store: Store) -> None:
    assert (await store.tasks.enqueue(new_task("a"), 60)).status == "missing"
    await store.registry.save_model(MODEL, {}, create=True)
    assert await store.registry.save_model(MODEL, {}, create=True) == "exists"
    assert (await store.tasks.enqueue(new_task("a"), 60)).status == "ok"
    assert await store.registry.mark_deleting(MODEL)
    assert (await store.tasks.enqueue(new_task("b"), 60)).status == "deleting"


async def test_claim_lease_finish_publishes_and_stores(store: Store) -> None:
    await deploy_with_ready_instance(store)
    enq = await store.tasks.enqueue(new_task("a"), 60)
    assert (enq.status, enq.queue_length, enq.instances) == ("ok", 1, 1)

    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("t:results:h")
    status, claim = await claim_and_stamp(store)
    assert status == "ok" and claim is not None and claim.attempt == 1
    assert (await store.registry.get_instance("i1")).outstanding == 1  # type: ignore[union-attr]
    assert await store.tasks.renew("a", "head-a", 1, time.time() + 30)
    assert not await store.tasks.renew("a", "head-b", 1, time.time() + 30)

    done = ResultMessage("a", 1, 0, "done", {"ok": True}).encode()
    assert await store.tasks.finish("a", MODEL, "i1", 1, "done", done, time.time(), 60)
    # A second finish of the same attempt changes nothing.
    assert not await store.tasks.finish("a", MODEL, "i1", 1, "done", done, time.time(), 60)
    msg = None
    for _ in range(20):  # the first reads return the subscription's confirmation as None
        msg = await pubsub.get_message(timeout=0.1)
        if msg is not None:
            break
    assert msg is not None and ResultMessage.decode(msg["data"]).data == {"ok": True}
    await pubsub.aclose()

    state, result = await store.tasks.state_and_result("a")
    assert state == "done" and result == done
    inst = await store.registry.get_instance("i1")
    assert inst is not None and inst.outstanding == 0 and inst.last_finished > 0
    assert await store.tasks.expired_leases(time.time() + 100) == []


async def test_expired_lease_requeues_then_fails_after_max_attempts(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a", max_attempts=2), 60)
    _, first = await claim_and_stamp(store, lease=-1)
    assert first is not None
    assert await store.tasks.expired_leases(time.time()) == ["a"]
    assert await store.tasks.requeue("a", None, "lease expired", time.time(), 60) == "requeued"
    assert await store.tasks.queued(MODEL) == ["a"]
    # The first attempt's late finish is stale and is ignored.
    late = ResultMessage("a", 1, 0, "done", {}).encode()
    assert not await store.tasks.finish("a", MODEL, "i1", 1, "done", late, time.time(), 60)

    _, second = await claim_and_stamp(store, lease=-1)
    assert second is not None and second.attempt == 2
    assert await store.tasks.requeue("a", 2, "worker died", time.time(), 60) == "failed"
    state, result = await store.tasks.state_and_result("a")
    assert state == "failed" and result is not None
    err = ResultMessage.decode(result)
    assert err.kind == "error" and err.data["error"]["code"] == "attempts_exhausted"
    assert await store.tasks.queued(MODEL) == [] and await store.tasks.processing(MODEL) == []
    assert (await store.registry.get_instance("i1")).outstanding == 0  # type: ignore[union-attr]


def offer(instance_id: str = "i1", limit: int = 2, owner: str = "head-a") -> Offer:
    now = time.time()
    return Offer(owner, instance_id, limit, now, now + 30)


async def test_an_offer_takes_a_task_past_an_empty_queue(store: Store) -> None:
    await deploy_with_ready_instance(store)
    enq = await store.tasks.enqueue(new_task("a"), 60, offer(limit=1))
    assert (enq.status, enq.queue_length, enq.instances) == ("ok", 0, 1)
    claim = enq.claim
    assert claim is not None and claim.attempt == 1 and claim.task_id == "a"
    assert (claim.endpoint, claim.reply_to) == ("/v1/completions", "t:results:h")
    assert json.loads(claim.body) == {"model": MODEL, "prompt": "hi"}
    # Stamped as a claim from the queue would be: the worker's finish ends it.
    record = await store.tasks.get("a")
    assert record is not None and (record.state, record.owner, record.instance) == (
        "running",
        "head-a",
        "i1",
    )
    assert await store.tasks.processing(MODEL) == ["a"]
    assert (await store.registry.get_instance("i1")).outstanding == 1  # type: ignore[union-attr]
    assert await store.tasks.renew("a", "head-a", 1, time.time() + 30)
    done = ResultMessage("a", 1, 0, "done", {}).encode()
    assert await store.tasks.finish("a", MODEL, "i1", 1, "done", done, time.time(), 60)
    assert (await store.registry.get_instance("i1")).outstanding == 0  # type: ignore[union-attr]


async def test_an_offer_is_refused_where_a_claim_would_wait(store: Store) -> None:
    await deploy_with_ready_instance(store)
    assert (await store.tasks.enqueue(new_task("a"), 60, offer(limit=1))).claim is not None
    # The instance is full: queued.
    full = await store.tasks.enqueue(new_task("b"), 60, offer(limit=1))
    assert (full.status, full.queue_length, full.claim) == ("ok", 1, None)
    # Room again, but "b" waits in the queue: it goes first, "c" queues behind it.
    behind = await store.tasks.enqueue(new_task("c"), 60, offer(limit=5))
    assert (behind.queue_length, behind.claim) == (2, None)
    assert await store.tasks.queued(MODEL) == ["b", "c"]
    # An instance no longer ready takes nothing, even with an empty queue.
    await store.client.delete(Keys("t").queue(MODEL))
    assert await store.registry.set_instance_state("i1", "failed", reason="test")
    gone = await store.tasks.enqueue(new_task("d"), 60, offer(limit=5))
    assert (gone.queue_length, gone.claim) == (1, None)
    # A retried enqueue of a task already in the system is not claimed a second time.
    again = await store.tasks.enqueue(new_task("a"), 60, offer(limit=5))
    assert again.claim is None and (await store.tasks.get("a")).attempt == 1  # type: ignore[union-attr]


async def test_stamp_on_an_instance_that_is_not_ready_requeues(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a"), 60)
    assert await store.registry.set_instance_state("i1", "draining")
    status, claim = await claim_and_stamp(store)
    assert (status, claim) == ("instance", None)
    assert await store.tasks.queued(MODEL) == ["a"]


async def test_draining_refuses_a_busy_instance(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a"), 60)
    await claim_and_stamp(store)
    assert not await store.registry.set_instance_state("i1", "draining")


async def test_only_an_idle_instance_sleeps_and_asleep_it_takes_no_task(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a"), 60)
    await claim_and_stamp(store)
    assert not await store.registry.set_instance_state("i1", "sleeping")  # busy
    assert not await store.registry.set_instance_state("i1", "waking")  # not asleep
    now = time.time()
    await store.tasks.finish("a", MODEL, "i1", 1, "done", "{}", now, 60)
    assert await store.registry.set_instance_state("i1", "sleeping")
    # Queued behind a sleeper, a task counts no instance: the gateway wakes the
    # autoscaler at once; and the sleeper cannot be stamped.
    enq = await store.tasks.enqueue(new_task("b"), 60)
    assert (enq.status, enq.instances) == ("ok", 0)
    status, claim = await claim_and_stamp(store)
    assert (status, claim) == ("instance", None)
    assert not await store.registry.set_instance_state("i1", "ready")  # only once woken
    assert await store.registry.set_instance_state("i1", "waking")
    assert (await store.tasks.enqueue(new_task("c"), 60)).instances == 1
    assert await store.registry.set_instance_state("i1", "ready")
    status, claim = await claim_and_stamp(store)
    assert status == "ok" and claim is not None and claim.task_id == "b"


async def test_unstamped_claim_is_recovered(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a"), 60)
    assert await store.tasks.claim(MODEL) == "a"
    assert await store.tasks.processing(MODEL) == ["a"]
    assert await store.tasks.recover_claim(MODEL, "a")
    assert await store.tasks.queued(MODEL) == ["a"]


async def test_cancel_and_fail_queued(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a"), 60)
    await store.tasks.enqueue(new_task("b"), 60)
    assert await store.tasks.cancel("a", MODEL, time.time(), 60) == "queued"
    assert await store.tasks.queued(MODEL) == ["b"]
    assert await store.tasks.fail_queued(MODEL, "b", "gone", "model_deleted", time.time(), 60)
    state, result = await store.tasks.state_and_result("b")
    assert state == "failed" and result is not None
    assert ResultMessage.decode(result).data["error"]["code"] == "model_deleted"
    assert await store.tasks.cancel("missing", MODEL, time.time(), 60) is None


async def test_cancelled_running_task_is_released_by_its_expiry(store: Store) -> None:
    await deploy_with_ready_instance(store)
    await store.tasks.enqueue(new_task("a"), 60)
    await claim_and_stamp(store, lease=-1)
    assert await store.tasks.cancel("a", MODEL, time.time(), 60) == "running"
    assert await store.tasks.requeue("a", None, "lease expired", time.time(), 60) == "cancelled"
    assert await store.tasks.expired_leases(time.time()) == []
    assert (await store.registry.get_instance("i1")).outstanding == 0  # type: ignore[union-attr]


async def test_model_delete_purge_and_leader_lock(store: Store) -> None:
    await deploy_with_ready_instance(store)
    assert await store.registry.mark_deleting(MODEL)
    assert not await store.registry.purge_model(MODEL)  # an instance remains
    assert await store.registry.remove_instance("i1", MODEL) == []
    assert await store.registry.purge_model(MODEL)
    assert await store.registry.list_models() == []

    assert await store.registry.hold_leader("scaler", "a", 0.5)
    assert not await store.registry.hold_leader("scaler", "b", 0.5)
    assert await store.registry.hold_leader("scaler", "a", 0.5)
    await asyncio.sleep(0.6)
    assert await store.registry.hold_leader("scaler", "b", 0.5)


async def test_scripts_survive_script_flush(store: Store) -> None:
    await store.registry.save_model(MODEL, {}, create=True)
    await store.client.script_flush()
    assert (await store.tasks.enqueue(new_task("a"), 60)).status == "ok"


async def test_enqueue_sent_twice_queues_the_task_once(store: Store) -> None:
    # A retried enqueue whose first reply was lost must not queue the task again.
    await store.registry.save_model(MODEL, {}, create=True)
    assert (await store.tasks.enqueue(new_task("a"), 60)).status == "ok"
    again = await store.tasks.enqueue(new_task("a"), 60)
    assert (again.status, again.queue_length) == ("ok", 1)
    assert await store.client.lrange(Keys("t").queue(MODEL), 0, -1) == ["a"]


@pytest.mark.parametrize("patient", [False, True])
async def test_a_connection_the_server_closed_is_retried(redis_url: str, patient: bool) -> None:
    """After a Redis restart every pooled connection is dead; the next command on one
    must reconnect, not fail (it did: the clients were given redis-py's synchronous Retry,
    which an asyncio client never awaits, so nothing was ever retried)."""
    store = Store.connect(redis_url, Keys("t"), patient=patient)
    try:
        await store.ping()
        killer = redis_sync.Redis.from_url(redis_url)
        assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
        killer.close()
        # No await in between: the pool hands out the dead connection before the event
        # loop has seen it close.
        await store.ping()
    finally:
        await store.close()


async def test_an_ended_task_keeps_its_outcome_not_its_request(store: Store) -> None:
    """Redis memory per request: a finished task holds its result for result_ttl, not
    the body it came with (up to 8 MiB a request)."""
    await deploy_with_ready_instance(store)
    big = {"model": MODEL, "prompt": "x" * (1 << 20)}

    async def usage(task_id: str) -> int:
        return int(await store.client.memory_usage(f"t:task:{task_id}", samples=0) or 0)

    ended = {}
    for task_id, end in (("done", "finish"), ("failed", "requeue"), ("cancelled", "cancel")):
        task = NewTask(**{**new_task(task_id, max_attempts=1).__dict__, "body": big})
        await store.tasks.enqueue(task, 60)
        if end == "cancel":  # cancelled while it waits in the queue
            assert await store.tasks.cancel(task_id, MODEL, time.time(), 60) == "queued"
        else:
            _, claim = await claim_and_stamp(store, lease=-1)
            assert claim is not None and await usage(task_id) > 1 << 20  # runs: body kept
            if end == "finish":
                done = ResultMessage(task_id, 1, 0, "done", {"ok": True}).encode()
                assert await store.tasks.finish(
                    task_id, MODEL, "i1", 1, "done", done, time.time(), 60
                )
            else:  # a lost attempt with none left
                assert await store.tasks.requeue(task_id, None, "lost", time.time(), 60) == "failed"
        ended[task_id] = await usage(task_id)
    print({k: f"{v} bytes" for k, v in ended.items()})
    assert all(v < 2048 for v in ended.values()), ended
    state, result = await store.tasks.state_and_result("done")
    assert state == "done" and ResultMessage.decode(result or "").data == {"ok": True}


@pytest.mark.parametrize("offered", [False, True], ids=["claimed", "offered"])
async def test_only_the_claim_redis_holds_renews_and_finishes_its_attempt(
    store: Store, offered: bool
) -> None:
    """A failover lost attempt 1's stamp and the new primary stamped attempt 1 again:
    the first run's renew and finish, same attempt number, are refused by its claim."""
    await deploy_with_ready_instance(store)
    if offered:
        claim = (await store.tasks.enqueue(new_task("a"), 60, offer())).claim
    else:
        await store.tasks.enqueue(new_task("a"), 60)
        _, claim = await claim_and_stamp(store)
    assert claim is not None and claim.attempt == 1 and claim.claim
    assert claim.claim == await store.tasks.claimed("a")
    stale = repr(float(claim.claim) - 9.0)
    lease = time.time() + 30
    assert not await store.tasks.renew("a", "head-a", 1, lease, stale)
    assert await store.tasks.renew("a", "head-a", 1, lease, claim.claim)
    done = ResultMessage("a", 1, 0, "done", {}, stale).encode()
    assert not await store.tasks.finish("a", MODEL, "i1", 1, "done", done, time.time(), 60, stale)
    assert (await store.tasks.get("a")).state == "running"  # type: ignore[union-attr]
    done = ResultMessage("a", 1, 0, "done", {}, claim.claim).encode()
    assert await store.tasks.finish("a", MODEL, "i1", 1, "done", done, time.time(), 60, claim.claim)
