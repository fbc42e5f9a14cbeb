"""A heartbeat's cache report and warm processes reach the worker's record in a real
Redis, and from there the autoscaler's view of where a model would start fastest."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from sllm.config import DeployConfig, HeadSettings
from sllm.head.autoscaler import capacities, requirement
from sllm.head.placement import Requirement, place, unservable
from sllm.head.worker_manager import HeartbeatBody, WorkerManager
from sllm.kv.keys import Keys
from sllm.kv.store import Store

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def manager(redis_url: str) -> AsyncIterator[WorkerManager]:
    store = Store.connect(redis_url, Keys("wr"), patient=False)
    async with aiohttp.ClientSession() as http:
        yield WorkerManager(store, HeadSettings(redis_url=redis_url), http)
    await store.close()


def beat(node: str, cache: list[dict[str, object]], warm: int) -> HeartbeatBody:
    return HeartbeatBody.model_validate(
        {
            "node_id": node,
            # Nothing listens here: the confirmation the head sends fails, harmlessly.
            "url": "http://127.0.0.1:9",
            "resources": {"memory_available": 8 << 30, "cpu_percent": 5.0},
            "backends": ["transformers"],
            "cache": cache,
            "warm_processes": warm,
        }
    )


async def test_cache_reports_reach_the_record_and_placement(manager: WorkerManager) -> None:
    size = 540_000_000
    await manager.heartbeat(beat("w-disk", [{"source": "s", "tier": "disk", "bytes": size}], 1))
    await manager.heartbeat(beat("w-mem", [{"source": "s", "tier": "memory", "bytes": size}], 1))
    await manager.heartbeat(beat("w-none", [], 0))
    workers = {w.node_id: w for w in await manager.store.registry.list_workers()}
    assert workers["w-mem"].cache == [{"source": "s", "tier": "memory", "bytes": size}]
    assert workers["w-mem"].warm_processes == 1 and workers["w-none"].cache == []

    room = capacities(list(workers.values()), [], {})
    config = DeployConfig.model_validate(
        {
            "model": "m",
            "backend": "transformers",
            "backend_config": {"pretrained_model_name_or_path": "s"},
        }
    )
    need = requirement(config, room)
    assert (need.source, need.weights_bytes) == ("s", size)
    [placement] = place(room, need)
    assert (placement.node_id, placement.estimate.tier) == ("w-mem", "memory")
    assert placement.runner_up is not None and placement.runner_up.tier == "disk"


def test_a_bad_cache_report_is_refused() -> None:
    with pytest.raises(ValueError):
        beat("w", [{"source": "s", "tier": "gpu", "bytes": 1}], 0)
    with pytest.raises(ValueError):
        beat("w", [{"source": "s", "tier": "disk", "bytes": -1}], 0)


async def test_warm_pools_and_unavailable_backends_reach_placement(
    manager: WorkerManager,
) -> None:
    why = "the vllm backend needs vllm, not installed on this worker"
    body = beat("w-a", [], 1).model_copy(
        update={"warm_pools": {"sllm": 1, "vllm": 0}, "unavailable": {"vllm": why}}
    )
    await manager.heartbeat(body)
    [worker] = await manager.store.registry.list_workers()
    assert worker.warm_pools == {"sllm": 1, "vllm": 0} and worker.unavailable == {"vllm": why}
    [room] = capacities([worker], [], {})
    assert room.warm == {"sllm": 1, "vllm": 0} and room.unavailable == {"vllm": why}
    # A worker from before pools reports its sllm processes alone.
    await manager.heartbeat(beat("w-b", [], 2))
    old = next(w for w in await manager.store.registry.list_workers() if w.node_id == "w-b")
    assert capacities([old], [], {})[0].warm == {"sllm": 2}


async def test_a_suspected_worker_is_trusted_again_by_its_next_heartbeat(
    manager: WorkerManager, redis_url: str
) -> None:
    registry = manager.store.registry
    # Unknown workers are not suspected: no record springs up for them.
    assert not await registry.suspect_worker("w-ghost", "refused", 1.0)
    assert await registry.list_workers() == []

    await manager.heartbeat(beat("w-a", [], 0))
    assert await registry.suspect_worker("w-a", "health probe refused", 5.0)
    assert not await registry.suspect_worker("w-a", "again", 6.0)  # once
    [worker] = await registry.list_workers()
    assert (worker.suspect, worker.suspect_since) == ("health probe refused", 5.0)

    assert await registry.heartbeat("w-a", {"url": "http://127.0.0.1:9"}) == ("trusted", False)
    [worker] = await registry.list_workers()
    assert (worker.suspect, worker.suspect_since) == ("", 0.0)
    assert await registry.heartbeat("w-a", {"url": "http://127.0.0.1:9"}) == ("known", False)


async def test_a_drain_reaches_placement_at_once_and_the_worker_with_its_next_answer(
    manager: WorkerManager,
) -> None:
    registry = manager.store.registry
    assert (await manager.heartbeat(beat("w-a", [], 0)))["drain"] is False
    # An unknown worker is refused, and no record of it appears.
    assert not await registry.drain_worker("w-none", True)
    assert [w.node_id for w in await registry.list_workers()] == ["w-a"]
    assert await registry.drain_worker("w-a", True)
    # Placement sees it before the worker beats again: it can take nothing new.
    (worker,) = await registry.list_workers()
    assert worker.drain and worker.drain_state == "drained"
    (room,) = capacities([worker], [], {})
    assert room.backends == ()
    # Why nothing can start says so, not that no worker is registered.
    said = unservable([room], Requirement("transformers")) or ""
    assert "worker w-a is drained" in said and "no worker is registered" not in said
    # The heartbeat's answer tells the worker; the flag outlives its heartbeats.
    assert (await manager.heartbeat(beat("w-a", [], 0)))["drain"] is True
    assert (await manager.heartbeat(beat("w-a", [], 0)))["drain"] is True
    assert await registry.drain_worker("w-a", False)
    assert (await manager.heartbeat(beat("w-a", [], 0)))["drain"] is False
    (worker,) = await registry.list_workers()
    assert worker.drain_state is None and capacities([worker], [], {})[0].backends
