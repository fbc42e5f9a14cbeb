"""A warm process's arena: buffers laid out page-aligned in memory faulted in before,
claimed once, what is left given back to the kernel."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import psutil
import pytest
import torch

from sllm.store import arena
from sllm.store.arena import Arena

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_process_arena() -> Iterator[None]:
    yield
    arena.release()


def test_a_claim_lays_buffers_out_page_aligned_and_takes_the_arena() -> None:
    held = Arena(MiB)
    first, second, empty = held.claim([10, 5000, 0]) or []
    assert [b.numel() for b in (first, second, empty)] == [10, 5000, 0]
    assert first.dtype == torch.uint8
    assert second.data_ptr() - first.data_ptr() == mmap.PAGESIZE
    assert first.data_ptr() % mmap.PAGESIZE == 0
    second.fill_(7)
    assert int(second.sum()) == 7 * 5000
    assert held.claim([10]) is None  # one instance, one claim


def test_buffers_that_do_not_fit_are_refused_and_the_arena_stays() -> None:
    held = Arena(2 * mmap.PAGESIZE)
    assert held.claim([mmap.PAGESIZE, 1]) is not None
    held = Arena(2 * mmap.PAGESIZE)
    assert held.claim([mmap.PAGESIZE + 1, 1]) is None  # the second would start past the end
    assert held.claim([2 * mmap.PAGESIZE]) is not None


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def test_the_arena_is_resident_and_what_no_claim_takes_goes_back() -> None:
    before = rss()
    held = Arena(256 * MiB)
    faulted = rss()
    assert faulted - before > 200 * MiB  # faulted in before any claim
    [buf] = held.claim([MiB]) or []
    assert faulted - rss() > 200 * MiB  # all but the claimed mebibyte given back
    buf.fill_(1)  # the claimed part stays usable
    unclaimed = Arena(256 * MiB)
    faulted = rss()
    unclaimed.release()
    assert faulted - rss() > 200 * MiB


def test_a_process_arena_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert arena.claim([10]) is None  # none asked for
    monkeypatch.setenv(arena.ENV, str(MiB))
    arena.prefault()
    [buf] = arena.claim([100]) or []
    assert buf.numel() == 100
    assert arena.claim([100]) is None
    monkeypatch.setenv(arena.ENV, "1GB")
    with pytest.raises(ValueError, match="number of bytes"):
        arena.prefault()
