"""A torch backend process bound to the CPU cores its worker chose for it
(``worker/cpu_cores.py``), so that instances sharing a machine do not oversubscribe it.

Two transformers instances of the demo model on this project's 2-core VM, each with
torch's default of a thread per core, streamed 1.0-1.7 tokens/s each while both ran
(OpenMP threads spinning at their barriers against each other's), against 5.7-6.3 with
one thread each; alone, one thread gave 11 tokens/s against two threads' 12.5."""

from __future__ import annotations

import os
from pathlib import Path

CORES_ENV = "SLLM_CPU_CORES"


def cores_from_env() -> tuple[int, ...]:
    """The cores named in ``SLLM_CPU_CORES`` (``0,2,3``); () when unset."""
    value = os.environ.get(CORES_ENV, "").strip()
    return tuple(int(c) for c in value.split(",")) if value else ()


def bind_torch(cores: tuple[int, ...]) -> None:
    """Every thread of this process on ``cores``, and torch's intra-op pool their size.
    A warm process primed torch before it knew its cores: its threads exist already,
    and a thread's affinity is its own, so each is moved."""
    if not cores:
        return
    import torch

    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except (ProcessLookupError, OSError):
            continue  # a thread that ended meanwhile
    torch.set_num_threads(len(cores))
