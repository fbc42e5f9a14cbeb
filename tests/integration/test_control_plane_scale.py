"""What keeps the control plane's cost with the number of models deployed, against a real
redis-server: the model list read again only when it changed, the index of all
instances, the set of models with queued tasks, 'queued' announcements instead of a
blocking claim per model, and a bounded number of connections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from sllm.config import HeadSettings
from sllm.edge.hop_client import HopClient
from sllm.head.dispatcher import Dispatcher
from sllm.kv.client import MAX_CONNECTIONS
from sllm.kv.keys import Keys
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("s"), patient=False)
    await s.client.flushall()
    yield s
    await s.close()


@pytest.fixture
async def other_head(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("s"), patient=False)
    yield s
    await s.close()


def task(task_id: str, model: str) -> NewTask:
    now = time.time()
    body = {"model": model, "prompt": "hi"}
    return NewTask(task_id, model, "/v1/completions", body, "s:results:h", 2, now, now + 60)


async def calls(store: Store, command: str) -> int:
    stats = await store.client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_the_model_list_is_read_again_only_when_a_model_changed(
    store: Store, other_head: Store
) -> None:
    for i in range(20):
        await store.registry.save_model(f"m{i}", {"model": f"m{i}"}, create=True)
    assert len(await store.registry.list_models()) == 20
    before = await calls(store, "hgetall")
    for _ in range(5):
        assert len(await store.registry.list_models()) == 20
    assert await calls(store, "hgetall") == before  # one HMGET each, not twenty HGETALLs
    # Every kind of write, by another head, is seen at the next read.
    await other_head.registry.save_model("m0", {"model": "m0", "v": 2}, create=False)
    [m0] = [m for m in await store.registry.list_models() if m.name == "m0"]
    assert m0.config["v"] == 2
    await other_head.registry.set_unschedulable("m1", "no worker")
    [m1] = [m for m in await store.registry.list_models() if m.name == "m1"]
    assert m1.unschedulable == "no worker"
    await other_head.registry.set_start_failures("m2", {"w1": {"count": 1}})
    [m2] = [m for m in await store.registry.list_models() if m.name == "m2"]
    assert m2.start_failures == {"w1": {"count": 1}}
    assert await other_head.registry.mark_deleting("m3")
    assert {m.name for m in await store.registry.list_models() if m.state == "deleting"} == {"m3"}
    assert await other_head.registry.purge_model("m3")
    assert len(await store.registry.list_models()) == 19
    # A note written again unchanged is no change.
    await store.registry.list_models()
    before = await calls(store, "hgetall")
    await other_head.registry.set_unschedulable("m1", "no worker")
    await store.registry.list_models()
    assert await calls(store, "hgetall") == before
    # A flushed Redis whose counter comes back to the same number is still a change.
    version = await store.client.hget(store.keys.models_version, "n")
    await store.client.flushall()
    for i in range(int(version)):
        await other_head.registry.save_model(f"new{i}", {}, create=True)
    assert await store.client.hget(store.keys.models_version, "n") == version
    assert {m.name for m in await store.registry.list_models()} == {
        f"new{i}" for i in range(int(version))
    }


async def test_every_instance_is_listed_from_one_index(store: Store, other_head: Store) -> None:
    for i in range(50):
        await store.registry.save_model(f"m{i}", {}, create=True)
    for i in range(3):
        record = InstanceRecord(id=f"i{i}", model=f"m{i}", node_id="w1", url="http://w1")
        assert await store.registry.create_instance(record)
    before = await calls(store, "smembers")
    by_model = await store.registry.all_instances([f"m{i}" for i in range(50)])
    assert await calls(store, "smembers") == before + 1  # not one per model
    assert {m: [i.id for i in v] for m, v in by_model.items() if v} == {
        "m0": ["i0"],
        "m1": ["i1"],
        "m2": ["i2"],
    }
    assert await store.registry.remove_instance("i1", "m1") == []
    assert [i.id for i in await store.registry.instances()] == ["i0", "i2"]
    # A Redis an older version filled has no index: a head starting indexes it.
    await store.client.delete(store.keys.instances)
    assert await store.registry.instances() == []
    await other_head.index()
    assert [i.id for i in await store.registry.instances()] == ["i0", "i2"]
    # An id left in the index without its record is dropped when listed.
    await store.client.sadd(store.keys.instances, "gone")
    assert [i.id for i in await store.registry.instances()] == ["i0", "i2"]
    assert not await store.client.sismember(store.keys.instances, "gone")


async def test_only_models_with_queued_tasks_are_looked_at(store: Store, other_head: Store) -> None:
    for i in range(30):
        await store.registry.save_model(f"m{i}", {}, create=True)
    assert await store.tasks.queued_models() == {}
    assert (await store.tasks.enqueue(task("a", "m7"), 60)).status == "ok"
    assert (await store.tasks.enqueue(task("b", "m7"), 60)).status == "ok"
    assert await store.tasks.queued_models() == {"m7": (2, 0)}
    assert await store.tasks.claim("m7") == "a"
    assert await store.tasks.queued_models() == {"m7": (1, 1)}
    assert await store.tasks.queue_lengths(["m0", "m7"]) == {"m0": 0, "m7": 1}
    await store.client.delete(store.keys.queue("m7"), store.keys.processing("m7"))
    assert await store.tasks.queued_models() == {}
    assert not await store.client.exists(store.keys.queued_models)  # emptied models leave
    # Tasks an older version queued are found once a head starts.
    await store.client.rpush(store.keys.queue("m3"), "old")
    assert await store.tasks.queued_models() == {}
    await other_head.index()
    assert await store.tasks.queued_models() == {"m3": (1, 0)}


async def test_a_queue_that_gets_its_first_task_is_announced(store: Store) -> None:
    await store.registry.save_model("m", {}, create=True)
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.keys.control)
    try:

        async def announced() -> list[dict[str, str]]:
            events, deadline = [], time.monotonic() + 0.3
            while time.monotonic() < deadline:
                msg = await pubsub.get_message(timeout=0.05)
                if msg is not None:
                    events.append(json.loads(msg["data"]))
            return events

        await store.tasks.enqueue(task("a", "m"), 60)
        await store.tasks.enqueue(task("b", "m"), 60)
        assert await announced() == [{"type": "queued", "model": "m"}]
        assert await store.tasks.claim("m") == "a"
        assert await store.tasks.claim("m") == "b"
        assert await store.tasks.claim("m") is None  # at once: nothing blocks
        # A claim never stamped, put back by the reaper: announced as well.
        assert await store.tasks.recover_claim("m", "a")
        assert await announced() == [{"type": "queued", "model": "m"}]
    finally:
        await pubsub.aclose()


async def test_claim_loops_of_many_models_share_a_bounded_number_of_connections(
    store: Store, redis_url: str
) -> None:
    models = [f"m{i}" for i in range(3 * MAX_CONNECTIONS)]
    for i, name in enumerate(models):
        await store.registry.save_model(name, {"model": name}, create=True)
        record = InstanceRecord(id=f"i{i}", model=name, node_id="w1", url="http://127.0.0.1:9")
        assert await store.registry.create_instance(record)
        assert await store.registry.set_instance_state(f"i{i}", "ready")
    head = Store.connect(redis_url, Keys("s"), patient=True)
    async with HopClient(idle_seconds=4.0) as http:
        dispatcher = Dispatcher(head, HeadSettings(), "head-a", http)
        started: list[str] = []
        dispatcher._start = lambda claim, _instance: started.append(claim.task_id)  # type: ignore[method-assign]
        runner = asyncio.create_task(dispatcher.run())
        try:
            # Every model's loop has a ready instance and an empty queue.
            for _ in range(100):
                if len(dispatcher._loops) == len(models):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            clients = await store.client.client_list()
            assert len(clients) <= MAX_CONNECTIONS + 2, len(clients)
            # A task queued by another head is claimed once it is announced.
            assert (await store.tasks.enqueue(task("t", "m5"), 60)).status == "ok"
            await dispatcher.on_control({"type": "queued", "model": "m5"})  # (no bus here)
            for _ in range(100):
                if started:
                    break
                await asyncio.sleep(0.02)
            assert started == ["t"]
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await head.close()


async def test_workers_are_read_again_only_when_their_record_changed(
    store: Store, other_head: Store
) -> None:
    for i in range(10):
        await other_head.registry.heartbeat(f"w{i}", {"url": f"http://w{i}", "cache": []})
    assert len(await store.registry.list_workers()) == 10
    before = await calls(store, "hgetall")
    assert len(await store.registry.list_workers()) == 10
    assert await calls(store, "hgetall") == before  # stamps only
    # A heartbeat and a suspicion are read; a pruned worker is gone.
    await other_head.registry.heartbeat("w3", {"url": "http://w3", "cache": [{"source": "x"}]})
    assert await other_head.registry.suspect_worker("w4", "refused", time.time())
    await other_head.registry.remove_worker("w5")
    workers = {w.node_id: w for w in await store.registry.list_workers()}
    assert await calls(store, "hgetall") == before + 2
    assert workers["w3"].cache == [{"source": "x"}]
    assert workers["w4"].suspect == "refused"
    assert "w5" not in workers and len(workers) == 9


async def test_claim_loops_are_synced_again_when_a_model_changes_or_a_loop_ends(
    store: Store, redis_url: str
) -> None:
    for i in range(3):
        await store.registry.save_model(f"m{i}", {"model": f"m{i}"}, create=True)
    head = Store.connect(redis_url, Keys("s"), patient=True)
    async with HopClient(idle_seconds=4.0) as http:
        dispatcher = Dispatcher(head, HeadSettings(), "head-a", http)
        try:
            await dispatcher._sync_models()
            loops = dict(dispatcher._loops)
            assert set(loops) == {"m0", "m1", "m2"}
            await dispatcher._sync_models()
            assert dispatcher._loops == loops  # the same models: the same loops
            loops["m1"].cancel()  # a loop that ended, the models unchanged
            await asyncio.sleep(0)
            await dispatcher._sync_models()
            assert dispatcher._loops["m1"] is not loops["m1"]
            assert not dispatcher._loops["m1"].done()
            await store.registry.save_model("m3", {"model": "m3"}, create=True)
            assert await store.registry.mark_deleting("m0")
            await dispatcher._sync_models()
            assert set(dispatcher._loops) == {"m1", "m2", "m3"}
        finally:
            await dispatcher._shutdown()
    await head.close()
