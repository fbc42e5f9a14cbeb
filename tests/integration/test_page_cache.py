"""The loader's mapped mode maps a stored model that is wholly in the page cache without
touching it, and touches one that is not; both give the same tensors."""

from __future__ import annotations

import mmap
import os
import platform
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sllm.store import loader, page_cache
from sllm.store.catalog import ensure_stored
from tests.tiny_models import build_tiny_causal_lm

pytestmark = pytest.mark.timeout(120)


def _kernel_at_least(major: int, minor: int) -> bool:
    release = platform.release().split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


needs_cachestat = pytest.mark.skipif(
    not _kernel_at_least(6, 5) or platform.machine() not in ("x86_64", "aarch64"),
    reason="cachestat needs Linux 6.5 on x86_64 or aarch64",
)


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cached(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return page_cache.fully_cached(fd, path.stat().st_size)
    finally:
        os.close(fd)


@needs_cachestat
def test_a_file_just_read_is_fully_cached_and_an_evicted_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(8 * 2**20))
    path.read_bytes()
    assert _cached(path)
    _evict(path)
    assert not _cached(path)


def test_populate_maps_a_range_of_a_file_mapping(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(8 * 2**20))
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        start = _address(mapped)
        assert page_cache.populate(start, 4 * 2**20)
        assert 4 * 2**10 <= _mapped_kib(start) < 8 * 2**10  # the first half, not the rest
    finally:
        mapped.close()


def _address(mapped: mmap.mmap) -> int:
    import numpy as np

    return int(np.frombuffer(mapped, dtype=np.uint8).ctypes.data)


def _mapped_kib(start: int) -> int:
    """Rss of the mapping that begins at ``start``, from /proc/self/smaps."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.split("-")[0] == f"{start:x}":
            rss = next(entry for entry in lines[i + 1 :] if entry.startswith("Rss:"))
            return int(rss.split()[1])
    raise AssertionError("the mapping is not in /proc/self/smaps")


@needs_cachestat
def test_the_mapped_load_populates_a_cached_model_and_touches_an_evicted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build_tiny_causal_lm(tmp_path / "lm")
    store, index = ensure_stored(source, tmp_path / "cache", AutoModelForCausalLM)
    populated: list[int] = []

    def spy(address: int, length: int) -> bool:
        populated.append(length)
        return page_cache.populate(address, length)

    monkeypatch.setattr(loader, "populate", spy)
    options = loader.ReadOptions(cpu_mode="map")
    for chunk in index.chunks:
        (store / chunk.file).read_bytes()
    # Copied, so that no mapping keeps the pages from being evicted below.
    cached = {n: t.clone() for n, t in loader.read_tensors(store, index, "cpu", options).items()}
    assert sum(populated) == sum(chunk.size for chunk in index.chunks)

    populated.clear()
    for chunk in index.chunks:
        _evict(store / chunk.file)
    evicted = loader.read_tensors(store, index, "cpu", options)
    assert populated == []
    assert cached.keys() == evicted.keys()
    assert all(torch.equal(cached[name], evicted[name]) for name in cached)
