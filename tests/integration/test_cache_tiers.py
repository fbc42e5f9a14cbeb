"""The tiered model cache on real files: the backend's load records the deployed
source, a stopped model's pages are held (locked) in memory and it loads from the same
files, both tiers stay within their limits, least recently used first, never evicting
what an instance serves, and a worker that may not lock memory says so and goes on."""

from __future__ import annotations

import asyncio
import errno
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sllm.metrics import WorkerMetrics
from sllm.store import tiers
from sllm.store.catalog import load_pretrained
from sllm.store.tiers import Cached, ModelCache, record_use
from sllm.worker.model_cache import WorkerCache
from tests.integration.test_store import assert_same_model
from tests.tiny_models import build_tiny_causal_lm

pytestmark = pytest.mark.timeout(120)

GB = 1 << 30


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sources")
    return [build_tiny_causal_lm(root / f"lm{i}", seed=i) for i in range(3)]


def load(source: Path, storage: Path) -> object:
    return load_pretrained(
        AutoModelForCausalLM,
        source,
        storage,
        "cpu",
        dtype=torch.float32,
        source=f"deployed-{source.name}",
    )


def store_all(models: list[Path], storage: Path) -> dict[str, Cached]:
    """Each model loaded once (so stored), its stored copy by deployed source."""
    for source in models:
        load(source, storage)
    return {e.sources[0]: e for e in ModelCache(storage, 0).entries()}


def locked_kib() -> int:
    """This process's locked memory (VmLck), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck")


def test_a_stopped_model_is_held_in_memory_and_loads_from_the_same_files(
    models: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "models"
    cache = ModelCache(storage, memory_limit=GB)
    load(models[0], storage)
    [stored] = cache.entries()
    assert (stored.tier, stored.sources) == ("disk", ("deployed-lm0",))
    assert stored.last_used > 0
    before = locked_kib()
    try:
        assert cache.keep_in_memory("deployed-lm0", in_use=set()) == stored.path
        assert {(e.tier, e.name) for e in cache.entries()} == {
            ("disk", stored.name),
            ("memory", stored.name),
        }
        chunks = sum(p.stat().st_size for p in stored.path.glob("chunk-*"))
        assert locked_kib() - before >= chunks // 1024
        # Held already: nothing more is locked.
        assert cache.keep_in_memory("deployed-lm0", in_use=set()) == stored.path
        got = load(models[0], storage)
        assert_same_model(got, AutoModelForCausalLM.from_pretrained(models[0]).eval())
        assert cache.keep_in_memory("never-deployed", in_use=set()) is None
    finally:
        cache.close()
    assert locked_kib() == before


def two_in_memory(models: list[Path], storage: Path) -> tuple[ModelCache, dict[str, Cached], int]:
    """A memory tier with room for two of ``models``, holding lm0 then lm1; the stored
    copies, and the size of the largest."""
    disk = store_all(models, storage)
    one = max(e.bytes for e in disk.values())
    # The disk tier's limit given: what the host's disk holds must not evict here.
    cache = ModelCache(storage, memory_limit=2 * one + one // 2, disk_limit=GB)
    for i, name in enumerate(["deployed-lm0", "deployed-lm1"]):
        record_use(disk[name].path, name, now=1000.0 + i)
        assert cache.keep_in_memory(name, in_use=set()) is not None
    return cache, disk, one


def test_the_memory_tier_keeps_its_limit_least_recently_used_first(
    models: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "models"
    cache, disk, one = two_in_memory(models, storage)
    try:
        # lm0 is the least recently used, but an instance serves it: lm1 goes instead.
        record_use(disk["deployed-lm2"].path, "deployed-lm2", now=1002.0)
        assert cache.keep_in_memory("deployed-lm2", in_use={"deployed-lm0"}) is not None
        in_memory = {e.sources[0] for e in cache.entries() if e.tier == "memory"}
        assert in_memory == {"deployed-lm0", "deployed-lm2"}
        # A smaller limit evicts down to it, the served one last.
        cache.memory_limit = one
        removed = cache.evict(in_use={"deployed-lm2"})
        assert [(e.sources[0], e.tier) for e in removed] == [("deployed-lm0", "memory")]
    finally:
        cache.close()
    # Larger than the whole tier: not held.
    small = ModelCache(storage, memory_limit=one // 2)
    assert small.keep_in_memory("deployed-lm1", in_use=set()) is None


def test_sleeping_instances_take_their_memory_from_the_memory_tiers_limit(
    models: list[Path], tmp_path: Path
) -> None:
    cache, _, one = two_in_memory(models, tmp_path / "models")
    try:
        cache.asleep_bytes = one
        assert [e.sources[0] for e in cache.evict(in_use=set())] == ["deployed-lm0"]
        # Room for one and a half now: the next model held pushes the other out.
        assert cache.keep_in_memory("deployed-lm2", in_use=set()) is not None
        assert [e.sources[0] for e in cache.entries() if e.tier == "memory"] == ["deployed-lm2"]
        # Held by sleepers whole, it holds nothing more.
        cache.asleep_bytes = cache.memory_limit
        assert cache.memory_room == 0
        assert cache.keep_in_memory("deployed-lm0", in_use=set()) is None
        cache.evict(in_use=set())
        assert [e for e in cache.entries() if e.tier == "memory"] == []
    finally:
        cache.close()


def test_a_restarted_worker_holds_its_most_recently_used_models_in_memory_again(
    models: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "models"
    disk = store_all(models, storage)
    for i, name in enumerate(["deployed-lm1", "deployed-lm0", "deployed-lm2"]):
        record_use(disk[name].path, name, now=1000.0 + i)
    one = max(e.bytes for e in disk.values())
    before = locked_kib()
    # A new process's cache (what a restarted worker has) with room for two.
    cache = ModelCache(storage, memory_limit=2 * one + one // 2)
    try:
        held = cache.restore()
        assert [e.sources[0] for e in held] == ["deployed-lm2", "deployed-lm0"]
        in_memory = {e.sources[0] for e in cache.entries() if e.tier == "memory"}
        assert in_memory == {"deployed-lm2", "deployed-lm0"}
        assert locked_kib() > before
        # Held already: restoring again adds nothing.
        assert cache.restore() == []
    finally:
        cache.close()
    assert locked_kib() == before


def test_the_disk_tier_keeps_its_limit_but_never_what_is_served(
    models: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "models"
    for i, source in enumerate(models):
        load(source, storage)
        [stored] = [e for e in ModelCache(storage, 0).entries() if f"lm{i}" in e.sources[0]]
        record_use(stored.path, f"deployed-lm{i}", now=1000.0 + i)
    one = max(e.bytes for e in ModelCache(storage, 0).entries())
    cache = ModelCache(storage, memory_limit=GB, disk_limit=one + one // 2)  # room for one
    before = locked_kib()
    assert cache.keep_in_memory("deployed-lm1", in_use=set()) is not None
    removed = cache.evict(in_use={"deployed-lm0"})
    assert sorted(e.sources[0] for e in removed) == ["deployed-lm1", "deployed-lm2"]
    [kept] = cache.entries()
    assert kept.sources == ("deployed-lm0",)
    # A model deleted from disk is let go of in memory too, with its record of use.
    assert locked_kib() == before
    assert not list((storage / "store").glob("*lm1*.use.json"))
    load(models[1], storage)
    assert len(cache.entries()) == 2


def test_a_disk_that_others_filled_keeps_the_most_recently_used_model(
    models: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = tmp_path / "models"
    disk = store_all(models, storage)
    for i, name in enumerate(["deployed-lm2", "deployed-lm0", "deployed-lm1"]):
        record_use(disk[name].path, name, now=1000.0 + i)
    cache = ModelCache(storage, memory_limit=0)  # the default limit: a tenth kept free

    real = shutil.disk_usage

    def disk_with(free: int) -> None:
        usage = real(storage)._replace(total=10 * GB, free=free)
        monkeypatch.setattr(tiers.shutil, "disk_usage", lambda path: usage)

    disk_with(free=5 * GB)
    assert cache.evict(in_use=set()) == []
    # Less than a tenth free, none of it taken by the store: the newest stays.
    disk_with(free=0)
    removed = cache.evict(in_use=set())
    assert sorted(e.sources[0] for e in removed) == ["deployed-lm0", "deployed-lm2"]
    assert [e.sources for e in cache.entries()] == [("deployed-lm1",)]
    assert caplog.text.count("less than a tenth") == 1
    assert cache.evict(in_use=set()) == []
    assert caplog.text.count("less than a tenth") == 1


def test_a_worker_that_may_not_lock_memory_keeps_no_memory_tier(
    models: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(self: tiers.Pinned, path: Path) -> None:
        raise OSError(errno.EPERM, "mlock: Operation not permitted")

    monkeypatch.setattr(tiers.Pinned, "_pin", refuse)
    storage = tmp_path / "models"
    load(models[0], storage)
    cache = ModelCache(storage, memory_limit=GB)
    assert cache.keep_in_memory("deployed-lm0", in_use=set()) is None
    assert "CAP_IPC_LOCK" in caplog.text
    assert [e.tier for e in cache.entries()] == ["disk"]


async def test_the_worker_reports_its_cache_and_holds_stopped_models(
    models: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "models"
    load(models[0], storage)
    worker = WorkerCache(ModelCache(storage, GB), WorkerMetrics())
    [entry] = await worker.report()
    assert entry["source"] == "deployed-lm0" and entry["tier"] == "disk"
    worker.started("i-1", {"pretrained_model_name_or_path": "deployed-lm0"})
    worker.ended("i-1", "stopped")
    await promotions_done(worker)
    [entry] = await worker.report()
    assert entry["tier"] == "memory" and entry["bytes"] > 0
    metrics = worker._metrics.registry
    assert metrics.get_sample_value("sllm_worker_cached_models", {"tier": "memory"}) == 1
    # A failed instance's model is not held.
    load(models[1], storage)
    worker.started("i-2", {"pretrained_model_name_or_path": "deployed-lm1"})
    worker.ended("i-2", "failed")
    await promotions_done(worker)
    tiers_by_source = {e["source"]: e["tier"] for e in await worker.report()}
    assert tiers_by_source == {"deployed-lm0": "memory", "deployed-lm1": "disk"}
    await worker.close()
    assert {e["tier"] for e in await worker.report()} == {"disk"}


async def promotions_done(worker: WorkerCache) -> None:
    if worker._tasks:
        await asyncio.wait(worker._tasks, timeout=30)
