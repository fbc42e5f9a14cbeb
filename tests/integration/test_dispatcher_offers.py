"""The gateway's offers to its own dispatcher, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sllm.config import DeployConfig, HeadSettings
from sllm.head.dispatcher import Dispatcher, ModelView
from sllm.kv.bus import ResultBus
from sllm.kv.keys import Keys
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask
from sllm.messages import ResultMessage

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


@pytest.fixture
async def worker() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A worker's /invoke that records each call and answers a done outcome, its message
    inline when the call asks for it."""
    calls: list[dict[str, Any]] = []

    async def invoke(request: web.Request) -> web.Response:
        call = await request.json()
        calls.append(call)
        outcome: dict[str, Any] = {"outcome": "done", "error": ""}
        if call["inline"]:
            message = ResultMessage(call["task_id"], call["attempt"], 0, "done", {"ok": True})
            outcome["result"] = message.encode()
        return web.Response(text=json.dumps(outcome) + "\n")

    app = web.Application()
    app.router.add_post("/invoke", invoke)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_a_result_for_this_head_comes_back_in_the_workers_answer(
    dispatcher: Dispatcher, store: Store, worker: tuple[str, list[dict[str, Any]]]
) -> None:
    url, calls = worker
    bus = ResultBus(store.client, Keys("o"), "head-a")
    dispatcher.bus = bus
    view = dispatcher._views[MODEL]
    await dispatcher._fetch(MODEL, view)
    view.records["i1"] = replace(view.records["i1"], url=url)
    other_head = "o:results:head-b"
    for task_id, stream, reply_to in (
        ("a", False, bus.channel),
        ("b", True, bus.channel),
        ("c", False, other_head),
    ):
        new = replace(task(task_id), stream=stream, reply_to=reply_to)
        queue = bus.listen(task_id)
        offer = dispatcher.offer(MODEL)
        assert offer is not None
        enq = await store.tasks.enqueue(new, 60, offer)
        assert enq.claim is not None
        dispatcher.adopt(enq.claim, MODEL, offer.instance_id)
        await dispatcher._running[task_id].job
        if task_id == "a":
            # No pub/sub in between: the message is on the listener's queue already.
            message = queue.get_nowait()
            assert isinstance(message, ResultMessage)
            assert (message.task, message.kind, message.data) == ("a", "done", {"ok": True})
        else:
            assert queue.empty()
        # What the worker stores behind its answer, freeing the instance's one slot.
        done = ResultMessage(task_id, 1, 0, "done", {}).encode()
        await store.tasks.finish(task_id, MODEL, "i1", 1, "done", done, time.time(), 60)
    # Streamed output, and a client waiting on another head, go through Redis.
    assert [c["inline"] for c in calls] == [True, False, False]
