"""The gateway's offers to its own dispatcher, against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from sllm.config import DeployConfig, HeadSettings
from sllm.edge.hop_client import HopClient
from sllm.head.dispatcher import Dispatcher
from sllm.head.model_view import ModelView
from sllm.head.renewals import Running, renew_leases
from sllm.kv.bus import ResultBus
from sllm.kv.keys import Keys
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask, Offer

MODEL = "m1"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("o"), patient=False)
    await s.client.flushall()
    yield s
    await s.close()


@pytest.fixture
async def dispatcher(store: Store) -> AsyncIterator[Dispatcher]:
    config = DeployConfig(model=MODEL, auto_scaling_config={"max_concurrency": 1})
    assert await store.registry.save_model(MODEL, config.model_dump(mode="json"), create=True)
    inst = InstanceRecord(id="i1", model=MODEL, node_id="w1", url="http://127.0.0.1:9")
    assert await store.registry.create_instance(inst)
    assert await store.registry.set_instance_state("i1", "ready")
    async with HopClient(idle_seconds=4.0) as http:
        d = Dispatcher(store, HeadSettings(lease_seconds=30), "head-a", http)
        # What _sync_models sets up for a deployed model, without its claim loop.
        d._configs[MODEL] = config
        d._views[MODEL] = ModelView()
        yield d


def task(task_id: str) -> NewTask:
    now = time.time()
    body = {"model": MODEL, "prompt": "hi"}
    return NewTask(task_id, MODEL, "/v1/completions", body, "o:results:h", 2, now, now + 60)


async def test_offers_follow_the_view_of_the_instances(dispatcher: Dispatcher) -> None:
    assert dispatcher.offer("nope") is None
    # Nothing fetched yet: no offer, but the fetch is on its way for the next request.
    assert dispatcher.offer(MODEL) is None
    refresh = dispatcher._views[MODEL].refresh
    assert refresh is not None
    await refresh
    offer = dispatcher.offer(MODEL)
    assert offer is not None and (offer.owner, offer.instance_id) == ("head-a", "i1")
    assert offer.max_concurrency == 1 and offer.lease_until == pytest.approx(offer.now + 30)
    # This head's own start fills the instance's one slot until the next fetch.
    dispatcher._views[MODEL].count("i1", +1)
    assert dispatcher.offer(MODEL) is None


async def test_a_claim_this_head_cannot_run_goes_back_unspent(
    dispatcher: Dispatcher, store: Store
) -> None:
    view = dispatcher._views[MODEL]
    dispatcher.offer(MODEL)
    assert view.refresh is not None
    await view.refresh
    offer = dispatcher.offer(MODEL)
    assert offer is not None
    enq = await store.tasks.enqueue(task("a"), 60, offer)
    assert enq.claim is not None
    # The instance left this head's view between the offer and the enqueue's answer.
    view.records.clear()
    dispatcher.adopt(enq.claim, MODEL, offer.instance_id)
    await asyncio.gather(*dispatcher._background)
    record = await store.tasks.get("a")
    assert record is not None and record.state == "queued" and record.owner == ""
    assert record.max_attempts == 3  # the attempt it never had is not counted
    assert await store.tasks.queued(MODEL) == ["a"]
    assert (await store.registry.get_instance("i1")).outstanding == 0  # type: ignore[union-attr]


async def test_a_claim_loop_does_not_overfill_an_instance_offers_filled(
    dispatcher: Dispatcher, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(
        dispatcher, "_start", lambda claim, _instance: started.append(claim.task_id)
    )
    claim = store.tasks.claim
    raced: list[str] = []

    async def claim_while_offers_fill(model: str) -> str | None:
        # The loop picked i1 (one free slot); before its claim lands, an offer fills i1
        # and the next request waits in the queue.
        if not raced:
            raced.append(model)
            offer = dispatcher.offer(MODEL)
            assert offer is not None
            enq = await store.tasks.enqueue(task("a"), 60, offer)
            assert enq.claim is not None
            dispatcher.adopt(enq.claim, MODEL, offer.instance_id)
            assert dispatcher.offer(MODEL) is None
            assert (await store.tasks.enqueue(task("b"), 60)).status == "ok"
        return await claim(model)

    monkeypatch.setattr(store.tasks, "claim", claim_while_offers_fill)
    dispatcher._wakes[MODEL] = asyncio.Event()
    loop = asyncio.create_task(dispatcher._claim_loop(MODEL))
    try:
        for _ in range(100):
            if raced:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the claim loop never claimed")
        # The loop, which picked i1 before, must not run "b" there.
        await asyncio.sleep(0.3)
        assert started == ["a"]
        record = await store.tasks.get("b")
        assert record is not None and record.state == "queued"
        assert await store.tasks.queued(MODEL) == ["b"]
        assert (await store.registry.get_instance("i1")).outstanding == 1  # type: ignore[union-attr]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_slot_coming_free_costs_no_claim_while_the_queue_is_known_empty(
    dispatcher: Dispatcher, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request on the offer path frees a slot when it ends: with nothing queued,
    that must not cost a claim (a Redis round trip) each time. A task pushed onto the
    queue afterwards is announced and claimed, also when the announcement reaches the
    head before the answer of the claim that found the queue empty."""
    dispatcher._configs[MODEL] = DeployConfig(
        model=MODEL, auto_scaling_config={"max_concurrency": 8}
    )
    started: list[str] = []
    monkeypatch.setattr(
        dispatcher, "_start", lambda claim, _instance: started.append(claim.task_id)
    )
    bus = ResultBus(store.client, Keys("o"), "head-a")
    bus.on_control(dispatcher.on_control)
    await bus.start()
    claim = store.tasks.claim
    claims: list[str | None] = []

    async def counted_claim(model: str) -> str | None:
        found = await claim(model)
        if len(claims) == 2:
            # The look after "b": "c" is pushed after this claim found the queue empty,
            # and its announcement is read before this answer is.
            assert found is None
            assert (await store.tasks.enqueue(task("c"), 60)).status == "ok"
            await wait_for(lambda: dispatcher._empty.before_claim(MODEL) == 2)
        claims.append(found)
        return found

    monkeypatch.setattr(store.tasks, "claim", counted_claim)
    dispatcher._wakes[MODEL] = asyncio.Event()
    instance = InstanceRecord(id="i1", model=MODEL, node_id="w1", url="http://127.0.0.1:9")
    loop = asyncio.create_task(dispatcher._claim_loop(MODEL))
    try:
        await wait_for(lambda: claims == [None])
        for _ in range(20):  # requests ending, one after another
            dispatcher._finished("t", instance)
            await asyncio.sleep(0.01)
        assert claims == [None]
        assert (await store.tasks.enqueue(task("b"), 60)).status == "ok"
        await wait_for(lambda: started == ["b", "c"])
        assert claims[:4] == [None, "b", None, "c"]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await bus.stop()


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


async def test_leases_running_here_are_renewed_by_one_pass_until_lost(store: Store) -> None:
    """Every claim running on this head has its lease renewed a third of a lease after
    the last, by the dispatcher's one renewal pass; a claim that is no longer this head's
    is left alone."""
    config = DeployConfig(model=MODEL, auto_scaling_config={"max_concurrency": 4})
    assert await store.registry.save_model(MODEL, config.model_dump(mode="json"), create=True)
    inst = InstanceRecord(id="i1", model=MODEL, node_id="w1", url="http://127.0.0.1:9")
    assert await store.registry.create_instance(inst)
    assert await store.registry.set_instance_state("i1", "ready")
    lease = 0.9
    async with HopClient(idle_seconds=4.0) as http:
        d = Dispatcher(store, HeadSettings(lease_seconds=lease), "head-a", http)
        running = []
        for name in ("a", "b"):
            now = time.time()
            offer = Offer("head-a", "i1", 4, now, now + lease)
            enq = await store.tasks.enqueue(task(name), 60, offer)
            assert enq.claim is not None
            job = asyncio.create_task(asyncio.sleep(60))
            running.append(Running(enq.claim, inst, job))
            d._running[name] = running[-1]
        renewals = asyncio.create_task(renew_leases(store, d.settings, "head-a", d._running))
        try:
            await asyncio.sleep(2 * lease)
            for name in ("a", "b"):
                deadline = await store.client.zscore(Keys("o").leases, name)
                assert deadline is not None and deadline > time.time() + lease / 3
            # "b" goes back to the queue (its lease lost): its renewal stops.
            assert await store.tasks.requeue("b", 1, "test", time.time(), 60) == "requeued"
            await asyncio.sleep(lease)
            assert running[0].renewed is not None and running[1].renewed is None
            assert await store.client.zscore(Keys("o").leases, "b") is None
        finally:
            renewals.cancel()
            for r in running:
                r.job.cancel()
