"""Memory a warm backend process faults in while it waits, for the weights of the
instance it becomes.

A process's first touch of a page costs a page fault; on a VM, a slow one (this
project's 2-core machine: a 1 GiB copy into fresh memory runs at a sixth to a tenth
of the speed of the same copy into memory touched before). A loader that gives a model
tensors of its own pays that per page, in the cold start. A warm process has time
to spare before it is asked for an instance: with ``SLLM_WARM_ARENA_BYTES`` set (the
worker's ``--warm-arena-gb``), it maps that much anonymous memory and writes every
page of it then. The store's loader reads a model's chunk files straight into it
(``claim``), so loading costs the copy from the page cache and nothing else, and the
weights live in memory the instance owns rather than in page cache the kernel may
drop under pressure and read back from disk in the middle of a request.

One arena per process, claimed once: a warm process becomes one instance. What the
instance does not claim (a smaller model, a GPU model, a backend without weights) is
given back to the kernel once its engine is built (``release``).
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ENV = "SLLM_WARM_ARENA_BYTES"
# Where each chunk starts in the arena: page-aligned, so every dtype's view is aligned.
_ALIGN = mmap.PAGESIZE


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Arena:
    """``nbytes`` of private anonymous memory, every page written once."""

    def __init__(self, nbytes: int) -> None:
        import numpy as np

        self.nbytes = _aligned(nbytes)
        self._map: mmap.mmap | None = mmap.mmap(
            -1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )
        # A write, not a read: reading an untouched anonymous page maps the shared zero
        # page, and the fault that gives the process a page of its own would come later.
        np.frombuffer(self._map, dtype=np.uint8)[::_ALIGN] = 1

    def claim(self, sizes: list[int]) -> list[torch.Tensor] | None:
        """One uint8 tensor of each size, laid out in the arena, or None if they do not
        fit (the caller allocates its own). The first claim takes the arena: the rest
        of it goes back to the kernel, and later claims get None."""
        import torch

        if self._map is None:
            return None
        starts, end = [], 0
        for size in sizes:
            starts.append(end)
            end += _aligned(size)
        if end > self.nbytes:
            log.info(
                "warm arena: %.2f GB asked for, it holds %.2f GB: not used",
                end / 1e9,
                self.nbytes / 1e9,
            )
            return None
        arena = self._map
        self._give_back(end)
        self._map = None  # the tensors keep the mapping alive
        return [
            torch.frombuffer(arena, dtype=torch.uint8, count=size, offset=start)
            if size
            else torch.empty(0, dtype=torch.uint8)
            for start, size in zip(starts, sizes, strict=True)
        ]

    def release(self) -> None:
        """Give the whole arena back (nothing claimed it)."""
        if self._map is not None:
            self._give_back(0)
            self._map.close()
            self._map = None

    def _give_back(self, used: int) -> None:
        assert self._map is not None
        if used < self.nbytes:
            self._map.madvise(mmap.MADV_DONTNEED, used, self.nbytes - used)


_process_arena: Arena | None = None


def env_bytes(name: str) -> int:
    """A size in bytes from the environment variable ``name`` (unset: 0)."""
    raw = os.environ.get(name, "0")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of bytes, not {raw!r}") from None


def prefault() -> None:
    """A warm process's priming step: the arena ``SLLM_WARM_ARENA_BYTES`` asks for."""
    global _process_arena
    nbytes = env_bytes(ENV)
    if nbytes <= 0:
        return
    started = time.perf_counter()
    _process_arena = Arena(nbytes)
    log.info("warm arena: %.2f GB faulted in (%.2f s)", nbytes / 1e9, time.perf_counter() - started)


def claim(sizes: list[int]) -> list[torch.Tensor] | None:
    """Buffers of these sizes in this process's arena; None where it has none (a cold
    process, or no ``--warm-arena-gb``), or they do not fit."""
    return _process_arena.claim(sizes) if _process_arena is not None else None


def release() -> None:
    """Give back what of this process's arena was not claimed."""
    global _process_arena
    if _process_arena is not None:
        _process_arena.release()
        _process_arena = None
