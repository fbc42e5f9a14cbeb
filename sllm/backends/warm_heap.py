"""Memory a warm backend process's malloc heap holds faulted in while it waits, for
what the instance it becomes allocates as it starts.

A transformers instance on a CPU allocates its continuous-batching KV cache (377 MB of
zeros for the demo model) as it starts, and a first touch of fresh memory is slow (see
``sllm.store.arena``): on the 2-core VM that allocation took 0.23-0.27 s of each start
(beside the tokenizer's load), 0.17-0.18 s with the pages faulted in before, and the
engine's whole build 0.42-0.68 s against 0.31-0.35 s. torch gets
its CPU memory from glibc's malloc, so the warm process asks glibc to serve every size
from one heap (``MALLOC_ARENA_MAX=1``: a thread's own arena would map new memory),
never from a fresh mapping (``MALLOC_MMAP_THRESHOLD_``), and never to give freed memory
back (``MALLOC_TRIM_THRESHOLD_``); it then allocates the heap's size, touching every
page, and frees it. The instance's first allocations reuse those pages.

glibc reads these variables when the process starts, so the worker starts its warm
processes with them (``environment``); instances it starts cold keep glibc's defaults.
Once the instance is loaded (``release``), what it left of the heap goes back to the
system, and glibc returns and maps large blocks again, as its own defaults would after a
while; the one arena stays (glibc sizes its arena limit once).

On by default where the instance's KV cache is in host memory: a worker without GPUs
(``CPU_DEFAULT_GB``). The cost is the idle warm process holding that much.
"""

from __future__ import annotations

import ctypes
import logging
import time

import psutil

from sllm.store.arena import env_bytes

log = logging.getLogger(__name__)

ENV = "SLLM_WARM_HEAP_BYTES"
# The demo model's KV cache (0.38 GB) and what its first allocations add, with room.
CPU_DEFAULT_GB = 0.5
# Larger than any allocation: none is served by a mapping of its own.
_NEVER = str(1 << 62)
# mallopt parameters (malloc.h), and after the load the values glibc's own dynamic
# thresholds end at: blocks of 32 MiB and more mapped alone, the heap's top given back
# past twice that.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_AFTER = 32 * 2**20
_TRIM_AFTER = 2 * _MMAP_AFTER
# Whether this process faulted a heap in (its environment is the instance's once it
# becomes one).
_faulted = False


def environment(nbytes: int) -> dict[str, str]:
    """The variables a warm process with a heap of ``nbytes`` is started with."""
    if nbytes <= 0:
        return {}
    return {
        ENV: str(nbytes),
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": _NEVER,
        "MALLOC_TRIM_THRESHOLD_": _NEVER,
    }


def prefault() -> None:
    """A warm process's priming step: the heap ``SLLM_WARM_HEAP_BYTES`` asks for."""
    global _faulted
    nbytes = env_bytes(ENV)
    if nbytes <= 0:
        return
    _faulted = True
    started = time.perf_counter()
    heap = bytearray(nbytes)  # one malloc of n bytes, zeroed: every page written once
    del heap  # back to the heap, which keeps it
    log.info("warm heap: %.2f GB faulted in (%.2f s)", nbytes / 1e9, time.perf_counter() - started)


def release() -> None:
    """After the instance's build, in a process started with a warm heap: the heap's
    unused pages go back, and later allocations follow thresholds near glibc's own."""
    if not _faulted:
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_AFTER)
    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
    before = psutil.Process().memory_info().rss
    libc.malloc_trim(0)
    log.info(
        "warm heap: %.2f GB unused, given back", (before - psutil.Process().memory_info().rss) / 1e9
    )
