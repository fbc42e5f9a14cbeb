"""The tiered model cache on real files: the backend's load records the deployed
source, a stopped model is copied into the memory tier and loaded from there next,
an unsound copy is dropped, and both tiers stay within their limits, least recently
used first, never evicting what an instance serves."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sllm.metrics import WorkerMetrics
from sllm.store.catalog import load_pretrained
from sllm.store.tiers import ModelCache, memory_copy, record_use
from sllm.worker.model_cache import WorkerCache
from tests.integration.test_store import assert_same_model
from tests.tiny_models import build_tiny_causal_lm

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sources")
    return [build_tiny_causal_lm(root / f"lm{i}", seed=i) for i in range(3)]


def load(source: Path, storage: Path, memory: Path | None) -> object:
    return load_pretrained(
        AutoModelForCausalLM,
        source,
        storage,
        "cpu",
        dtype=torch.float32,
        source=f"deployed-{source.name}",
        memory_root=memory,
    )


def test_a_stopped_model_loads_from_the_memory_tier_next(
    models: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage, memory = tmp_path / "models", tmp_path / "shm"
    cache = ModelCache(storage, memory, memory_limit=1 << 30)
    with caplog.at_level(logging.INFO, logger="sllm.store.catalog"):
        load(models[0], storage, memory)
    assert "from the disk tier" in caplog.text
    [stored] = cache.entries()
    assert (stored.tier, stored.sources) == ("disk", ("deployed-lm0",))
    assert stored.last_used > 0

    copy = cache.keep_in_memory("deployed-lm0", in_use=set())
    assert copy == memory / stored.name
    assert {(e.tier, e.name) for e in cache.entries()} == {
        ("disk", stored.name),
        ("memory", stored.name),
    }
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sllm.store.catalog"):
        got = load(models[0], storage, memory)
    assert "from the memory tier" in caplog.text
    # The weights are mapped from the memory copy's file.
    assert_same_model(got, AutoModelForCausalLM.from_pretrained(models[0]).eval())
    # Nothing stored for a source: nothing to keep.
    assert cache.keep_in_memory("never-deployed", in_use=set()) is None


def test_an_unsound_memory_copy_is_dropped_and_the_disk_copy_loads(
    models: list[Path], tmp_path: Path
) -> None:
    storage, memory = tmp_path / "models", tmp_path / "shm"
    cache = ModelCache(storage, memory, memory_limit=1 << 30)
    load(models[0], storage, memory)
    copy = cache.keep_in_memory("deployed-lm0", in_use=set())
    assert copy is not None
    chunk = next(copy.glob("chunk-*"))
    os.truncate(chunk, chunk.stat().st_size // 2)
    assert memory_copy(memory, storage / "store" / copy.name) is None
    assert not copy.exists()
    got = load(models[0], storage, memory)
    assert_same_model(got, AutoModelForCausalLM.from_pretrained(models[0]).eval())


def test_the_memory_tier_keeps_its_limit_least_recently_used_first(
    models: list[Path], tmp_path: Path
) -> None:
    storage, memory = tmp_path / "models", tmp_path / "shm"
    for source in models:
        load(source, storage, memory)
    disk = {e.sources[0]: e for e in ModelCache(storage, None, 0).entries()}
    one = max(e.bytes for e in disk.values())
    cache = ModelCache(storage, memory, memory_limit=2 * one + one // 2)  # room for two
    for i, name in enumerate(["deployed-lm0", "deployed-lm1"]):
        record_use(disk[name].path, name, now=1000.0 + i)
        assert cache.keep_in_memory(name, in_use=set()) is not None
    # lm0 is the least recently used, but an instance serves it: lm1 goes instead.
    record_use(disk["deployed-lm2"].path, "deployed-lm2", now=1002.0)
    assert cache.keep_in_memory("deployed-lm2", in_use={"deployed-lm0"}) is not None
    in_memory = {e.sources[0] for e in cache.entries() if e.tier == "memory"}
    assert in_memory == {"deployed-lm0", "deployed-lm2"}
    # Larger than the whole tier: not kept, nothing evicted for it.
    small = ModelCache(storage, memory, memory_limit=one // 2)
    assert small.keep_in_memory("deployed-lm1", in_use=set()) is None
    assert {e.sources[0] for e in cache.entries() if e.tier == "memory"} == in_memory


def test_the_disk_tier_keeps_its_limit_but_never_what_is_served(
    models: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "models"
    for i, source in enumerate(models):
        load(source, storage, None)
        stored = next(e for e in ModelCache(storage, None, 0).entries() if f"lm{i}" in e.sources[0])
        record_use(stored.path, f"deployed-lm{i}", now=1000.0 + i)
    one = max(e.bytes for e in ModelCache(storage, None, 0).entries())
    cache = ModelCache(storage, None, 0, disk_limit=one + one // 2)  # room for one
    removed = cache.evict(in_use={"deployed-lm0"})
    assert sorted(e.sources[0] for e in removed) == ["deployed-lm1", "deployed-lm2"]
    [kept] = cache.entries()
    assert kept.sources == ("deployed-lm0",)
    # Gone with its record of use; loading it again stores it again.
    assert not list((storage / "store").glob("*lm1*.use.json"))
    load(models[1], storage, None)
    assert len(cache.entries()) == 2


async def test_the_worker_reports_its_cache_and_keeps_stopped_models(
    models: list[Path], tmp_path: Path
) -> None:
    storage, memory = tmp_path / "models", tmp_path / "shm"
    load(models[0], storage, memory)
    worker = WorkerCache(ModelCache(storage, memory, 1 << 30), WorkerMetrics())
    assert worker.backend_env == {"SLLM_MEMORY_CACHE": str(memory)}
    [entry] = await worker.report()
    assert entry["source"] == "deployed-lm0" and entry["tier"] == "disk"
    worker.started("i-1", {"pretrained_model_name_or_path": "deployed-lm0"})
    worker.ended("i-1", "stopped")
    await worker.close()
    [entry] = await worker.report()
    assert entry["tier"] == "memory" and entry["bytes"] > 0
    metrics = worker._metrics.registry
    assert metrics.get_sample_value("sllm_worker_cached_models", {"tier": "memory"}) == 1
    # A failed instance's model is not promoted.
    load(models[1], storage, memory)
    worker.started("i-2", {"pretrained_model_name_or_path": "deployed-lm1"})
    worker.ended("i-2", "failed")
    await worker.close()
    tiers = {e["source"]: e["tier"] for e in await worker.report()}
    assert tiers == {"deployed-lm0": "memory", "deployed-lm1": "disk"}
