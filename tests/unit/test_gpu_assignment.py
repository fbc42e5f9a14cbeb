"""Choosing GPUs for a new instance."""

from __future__ import annotations

import pytest

from sllm.worker.gpu_assignment import GIB, GpuDoesNotFit, GpuMemory, choose_gpus, needed_per_gpu

GPUS = [GpuMemory(0, 10 * GIB), GpuMemory(1, 30 * GIB), GpuMemory(2, 20 * GIB)]


def test_the_freest_gpus_not_held_are_chosen() -> None:
    assert choose_gpus(GPUS, set(), 1, GIB) == [1]
    assert choose_gpus(GPUS, {1}, 2, GIB) == [0, 2]


def test_too_few_gpus_is_refused_naming_the_count() -> None:
    with pytest.raises(GpuDoesNotFit, match=r"needs 2 GPU.*has 3, 2 held"):
        choose_gpus(GPUS, {0, 1}, 2, GIB)
    with pytest.raises(GpuDoesNotFit, match="has 0"):
        choose_gpus([], set(), 1, 0)


def test_too_little_free_memory_is_refused_naming_the_gpu() -> None:
    with pytest.raises(GpuDoesNotFit, match=r"25.0 GiB free on each of 2.*GPU 2 has 20.0 GiB"):
        choose_gpus(GPUS, set(), 2, 25 * GIB)


def test_the_need_splits_the_weights_over_the_gpus_with_room_to_spare() -> None:
    one = needed_per_gpu(10 * GIB, 1)
    assert 10 * GIB < one < 13 * GIB
    assert needed_per_gpu(10 * GIB, 2) < one / 2 + GIB
    assert 0 < needed_per_gpu(None, 1) < GIB
