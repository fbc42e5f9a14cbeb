"""A worker's sleeping instances within the host memory they may hold: real stand-in
vLLM processes, the worker's cache and its admission of sleepers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sllm.backends import vllm_backend
from sllm.metrics import WorkerMetrics
from sllm.store.tiers import ModelCache
from sllm.worker.instance_manager import InstanceManager
from sllm.worker.model_cache import WorkerCache
from sllm.worker.sleepers import NoRoomToSleep, Sleepers
from tests.integration.test_instance_manager import Recorder

pytestmark = pytest.mark.timeout(60)

MB = 1_000_000


class Worker:
    """What the worker app wires together for sleeping instances."""

    def __init__(self, tmp_path: Path, memory_limit: int) -> None:
        self.recorder = Recorder()
        self.cache = WorkerCache(ModelCache(tmp_path / "models", memory_limit), WorkerMetrics())
        self.instances = InstanceManager(tmp_path / "logs", self.on_state)
        self.sleepers = Sleepers(self.instances, self.cache)
        self.tmp = tmp_path

    async def on_state(self, instance_id: str, state: str, reason: str) -> None:
        self.sleepers.changed(instance_id, state)
        await self.recorder(instance_id, state, reason)

    async def start(self, instance_id: str, weights_mb: int) -> None:
        """An instance of a model whose weights take ``weights_mb``, ready."""
        weights = self.tmp / instance_id
        weights.mkdir()
        with (weights / "model.safetensors").open("wb") as f:
            f.truncate(weights_mb * MB)
        config = {"pretrained_model_name_or_path": str(weights), "sleep_mode": True}
        await self.instances.start(instance_id, "m", "vllm", config, 0, {}, 20.0)
        self.cache.started(instance_id, config)
        await self.recorder.wait_for(instance_id, "ready")


@pytest.fixture
async def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Worker]:
    monkeypatch.setenv(vllm_backend.ENTRYPOINT_ENV, "tests.vllm_standin")
    w = Worker(tmp_path, memory_limit=10 * MB)
    yield w
    await w.instances.stop_all(grace=1.0)
    await w.cache.close()


async def test_the_longest_asleep_makes_room_for_a_newer_sleeper(worker: Worker) -> None:
    for name in ("old", "new", "big"):
        await worker.start(name, {"old": 6, "new": 6, "big": 11}[name])
    await worker.sleepers.put_to_sleep("old")
    assert worker.cache.cache.asleep_bytes == 6 * MB
    await worker.sleepers.put_to_sleep("new")
    reason = await worker.recorder.wait_for("old", "stopped")
    assert reason == "stopped while asleep: its host memory was needed"
    assert [i.instance_id for i in worker.instances.asleep()] == ["new"]
    assert worker.cache.cache.asleep_bytes == 6 * MB
    # Larger than all sleepers may hold: refused, and nobody is stopped for it.
    with pytest.raises(NoRoomToSleep, match="do not fit"):
        await worker.sleepers.put_to_sleep("big")
    assert worker.recorder.states("new") == ["ready", "sleeping"]
    await worker.instances.wake("new")
    assert worker.cache.cache.asleep_bytes == 0
