"""Which of this worker's GPUs a new instance gets, and whether it fits. Pure."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
# Room for the CUDA context, activations and a first KV cache beside the weights.
_OVERHEAD_FACTOR = 1.2
_OVERHEAD_BYTES = 512 << 20


@dataclass(frozen=True)
class GpuMemory:
    index: int
    free: int  # bytes


class GpuDoesNotFit(Exception):
    """The instance's GPUs are not there or too full; the message says which."""


def needed_per_gpu(weights_bytes: int | None, num_gpus: int) -> int:
    """Free memory each of ``num_gpus`` GPUs needs for weights of that size (split
    evenly); without a size, only the fixed overhead."""
    weights = weights_bytes or 0
    return int(weights * _OVERHEAD_FACTOR / max(num_gpus, 1)) + _OVERHEAD_BYTES


def choose_gpus(gpus: list[GpuMemory], taken: set[int], count: int, need: int) -> list[int]:
    """``count`` GPUs no instance here holds, most free memory first, each with ``need``
    bytes free."""
    free = sorted((g for g in gpus if g.index not in taken), key=lambda g: (-g.free, g.index))
    if len(free) < count:
        raise GpuDoesNotFit(
            f"needs {count} GPU(s); this worker has {len(gpus)}, "
            f"{len(gpus) - len(free)} held by its other instances"
        )
    chosen = free[:count]
    short = [g for g in chosen if g.free < need]
    if short:
        listed = ", ".join(f"GPU {g.index} has {g.free / GIB:.1f} GiB free" for g in short)
        raise GpuDoesNotFit(f"needs {need / GIB:.1f} GiB free on each of {count} GPU(s); {listed}")
    return sorted(g.index for g in chosen)
