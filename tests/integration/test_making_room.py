"""Making room through a real autoscaler pass against a real redis-server: a model
waiting for a GPU takes the worker that holds it in host memory from another model's
instance (stopped when idle, emptied by live migration when busy), instead of a free
GPU that must fetch it, and starts there once the room is made."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sllm.config import DeployConfig
from sllm.head.autoscaler import Autoscaler
from sllm.head.worker_manager import HeartbeatBody, WorkerManager
from sllm.kv.records import InstanceRecord, WorkerRecord
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask
from tests.integration.scalers import autoscaler

pytestmark = pytest.mark.timeout(30)

BIG = "/models/big"
GB = 1 << 30


class Recording(WorkerManager):
    """The head's worker manager with the calls to workers recorded instead of sent."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started: list[tuple[str, str]] = []
        self.stopped: list[str] = []

    async def start_instance(
        self, worker: WorkerRecord, model: str, config: DeployConfig, store_peers: Any = ()
    ) -> bool:
        self.started.append((worker.node_id, model))
        return True

    async def stop_instance(self, inst: InstanceRecord) -> None:
        self.stopped.append(inst.id)
        await self.store.registry.set_instance_state(inst.id, "stopped", reason="stopped")


@pytest.fixture
async def scaler(redis_url: str) -> AsyncIterator[Autoscaler]:
    async with autoscaler(redis_url, "room", Recording) as made:
        yield made


def gpu_model(name: str, source: str) -> dict[str, Any]:
    return {
        "model": name,
        "backend": "vllm",
        "num_gpus": 1,
        "backend_config": {"pretrained_model_name_or_path": source},
        "auto_scaling_config": {"max_concurrency": 4},
    }


async def beat(scaler: Autoscaler, node: str, cached: bool, instances: list[str]) -> None:
    cache = [{"source": BIG, "tier": "memory", "bytes": 16 * GB}] if cached else []
    body = {
        "node_id": node,
        "url": "http://127.0.0.1:9",  # nothing listens: calls to it fail, harmlessly
        "resources": {"memory_available": 64 * GB, "gpus": [{"index": 0}]},
        "backends": ["vllm"],
        "instances": [{"instance_id": i} for i in instances],
        "cache": cache,
    }
    await scaler.workers.heartbeat(HeartbeatBody.model_validate(body))


async def ready_instance(store: Store, inst_id: str, model: str, node: str, busy: int) -> None:
    now = time.time()
    record = InstanceRecord(inst_id, model, node, "http://127.0.0.1:9", "vllm", created=now)
    assert await store.registry.create_instance(record)
    assert await store.registry.set_instance_state(inst_id, "ready")
    await store.client.hset(store.keys.instance(inst_id), "outstanding", busy)


async def wait_for_big(store: Store) -> None:
    now = time.time()
    body = {"model": "big", "prompt": "hi"}
    task = NewTask("t1", "big", "/v1/completions", body, "room:results:h", 2, now, now + 60)
    await store.tasks.enqueue(task, 60)


async def deploy(store: Store, *configs: dict[str, Any]) -> None:
    for config in configs:
        await store.registry.save_model(config["model"], config, create=True)


async def test_an_idle_instance_gives_its_gpu_to_a_model_held_there_in_memory(
    scaler: Autoscaler, caplog: pytest.LogCaptureFixture
) -> None:
    store, workers = scaler.store, scaler.workers
    assert isinstance(workers, Recording)
    await deploy(store, gpu_model("other", "/models/other"), gpu_model("big", BIG))
    await ready_instance(store, "other-1", "other", "hot", busy=0)
    await beat(scaler, "hot", cached=True, instances=["other-1"])
    await beat(scaler, "cold", cached=False, instances=[])  # a free GPU, 16 GB to fetch
    await wait_for_big(store)

    with caplog.at_level(logging.INFO, "sllm.head.scaler_moves"):
        await scaler.tick(time.time())
    assert workers.stopped == ["other-1"] and workers.started == []
    assert "making room for big on hot: stopping other-1" in caplog.text

    await beat(scaler, "hot", cached=True, instances=[])
    await scaler.tick(time.time())
    assert workers.started == [("hot", "big")]


async def test_a_busy_instance_is_emptied_by_migration_where_its_model_has_room(
    scaler: Autoscaler,
) -> None:
    store, workers = scaler.store, scaler.workers
    assert isinstance(workers, Recording)
    await deploy(store, gpu_model("other", "/models/other"), gpu_model("big", BIG))
    await ready_instance(store, "other-1", "other", "hot", busy=2)
    await ready_instance(store, "other-2", "other", "spare", busy=1)
    await beat(scaler, "hot", cached=True, instances=["other-1"])
    await beat(scaler, "spare", cached=False, instances=["other-2"])
    await wait_for_big(store)

    await scaler.tick(time.time())
    emptied = await store.registry.get_instance("other-1")
    assert emptied is not None
    assert (emptied.state, emptied.state_reason) == ("migrating", "make_room")
    assert workers.started == [] and workers.stopped == []
    # The next pass waits for the room it asked for; nothing more is taken.
    await scaler.tick(time.time())
    other = await store.registry.get_instance("other-2")
    assert other is not None and other.state == "ready"
    assert workers.started == [] and "big" not in scaler.unschedulable


def cpu_model(name: str, source: str) -> dict[str, Any]:
    return {
        "model": name,
        "backend": "transformers",
        "backend_config": {"pretrained_model_name_or_path": source},
        "auto_scaling_config": {"max_concurrency": 4},
    }


async def cpu_beat(
    scaler: Autoscaler, node: str, free: int, cache: list[dict[str, Any]], instances: list[str]
) -> None:
    body = {
        "node_id": node,
        "url": "http://127.0.0.1:9",
        "resources": {"memory_available": free},
        "backends": ["transformers"],
        "instances": [{"instance_id": i} for i in instances],
        "cache": cache,
    }
    await scaler.workers.heartbeat(HeartbeatBody.model_validate(body))


async def test_a_cpu_instance_gives_its_memory_to_a_model_stored_on_its_worker(
    scaler: Autoscaler, caplog: pytest.LogCaptureFixture
) -> None:
    """On CPU workers memory is what an instance holds: "hot" has big on its disk but
    4 GB free of the 8 its weights take, another model's idle instance holding 6 GB;
    "cold" has the memory, not the model."""
    store, workers = scaler.store, scaler.workers
    assert isinstance(workers, Recording)
    await deploy(store, cpu_model("other", "/models/other"), cpu_model("big", BIG))
    await ready_instance(store, "other-1", "other", "hot", busy=0)
    held = [
        {"source": BIG, "tier": "disk", "bytes": 8 * GB},
        {"source": "/models/other", "tier": "memory", "bytes": 6 * GB},
    ]
    await cpu_beat(scaler, "hot", 4 * GB, held, ["other-1"])
    await cpu_beat(scaler, "cold", 64 * GB, [], [])
    await wait_for_big(store)

    with caplog.at_level(logging.INFO, "sllm.head.scaler_moves"):
        await scaler.tick(time.time())
    assert workers.stopped == ["other-1"] and workers.started == []
    assert "making room for big on hot: stopping other-1" in caplog.text

    await cpu_beat(scaler, "hot", 10 * GB, held, [])  # the worker beats once it stopped
    await scaler.tick(time.time())
    assert workers.started == [("hot", "big")]
