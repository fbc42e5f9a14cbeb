"""The models an autoscaler pass passes over, through real passes against a real
redis-server: a resting model (scaled to zero, nothing queued) is marked servable or
not when what the live workers run or its own record changes, and a pass in which
neither changed looks at none of them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sllm.head.autoscaler import Autoscaler
from sllm.head.worker_manager import HeartbeatBody
from sllm.kv.store import Store
from tests.integration.scalers import autoscaler

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def scaler(redis_url: str) -> AsyncIterator[Autoscaler]:
    async with autoscaler(redis_url, "rest") as made:
        yield made


async def beat(scaler: Autoscaler, node: str, backends: list[str]) -> None:
    body = {
        "node_id": node,
        "url": "http://127.0.0.1:9",
        "resources": {"memory_available": 64 << 30},
        "backends": backends,
    }
    await scaler.workers.heartbeat(HeartbeatBody.model_validate(body))


async def unschedulable(store: Store) -> dict[str, str]:
    return {m.name: m.unschedulable for m in await store.registry.list_models()}


async def test_resting_models_are_marked_when_workers_or_records_change(
    scaler: Autoscaler, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = scaler.store
    for i in range(20):
        config = {"model": f"d{i}", "backend": "dummy"}
        await store.registry.save_model(f"d{i}", config, create=True)
    await store.registry.save_model("v", {"model": "v", "backend": "vllm"}, create=True)
    await beat(scaler, "w1", ["dummy"])
    looked_at: list[str] = []
    mark = scaler._mark_servable

    async def counted(model: Any, *args: Any) -> None:
        looked_at.append(model.name)
        await mark(model, *args)

    monkeypatch.setattr(scaler, "_mark_servable", counted)

    await scaler.tick(time.time())
    marks = await unschedulable(store)
    assert "no live worker can run backend 'vllm'" in marks.pop("v")
    assert set(marks.values()) == {""}
    await scaler.tick(time.time())  # reads the note it wrote: a change, nothing to write
    looked_at.clear()
    await scaler.tick(time.time())
    await scaler.tick(time.time())
    assert looked_at == []  # nothing changed: no resting model looked at

    await beat(scaler, "w2", ["dummy", "vllm"])  # a worker that can run it
    await scaler.tick(time.time())
    assert (await unschedulable(store))["v"] == ""
    assert len(looked_at) == 21

    # A resting model's own record changes: it is looked at again.
    await store.registry.save_model("d3", {"model": "d3", "backend": "onnx"}, create=False)
    await scaler.tick(time.time())
    assert "no live worker can run backend 'onnx'" in (await unschedulable(store))["d3"]
