"""The gateway's offers to its own dispatcher, against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sllm.config import DeployConfig, HeadSettings
from sllm.head.dispatcher import Dispatcher, ModelView
from sllm.kv.keys import Keys
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask

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
    async with aiohttp.ClientSession() as http:
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
