"""Which worker gets a new instance. Pure."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class WorkerCapacity:
    node_id: str
    backends: tuple[str, ...]
    free_memory: int
    free_gpus: int
    instances: int
    total_gpus: int = 0


@dataclass(frozen=True)
class Requirement:
    backend: str
    memory: int = 0
    gpus: int = 0


def fits(worker: WorkerCapacity, need: Requirement) -> bool:
    return (
        need.backend in worker.backends
        and worker.free_memory >= need.memory
        and worker.free_gpus >= need.gpus
    )


def place(workers: list[WorkerCapacity], need: Requirement, count: int = 1) -> list[str]:
    """Node ids for up to ``count`` new instances: workers that fit, fewest instances first,
    then most free memory. Each choice uses up its share before the next is made, so one
    pass spreads instances. Fewer ids than ``count`` means nothing else fits."""
    pool = {w.node_id: w for w in workers}
    chosen: list[str] = []
    for _ in range(count):
        candidates = [w for w in pool.values() if fits(w, need)]
        if not candidates:
            break
        best = min(candidates, key=lambda w: (w.instances, -w.free_memory, w.node_id))
        chosen.append(best.node_id)
        pool[best.node_id] = replace(
            best,
            free_memory=best.free_memory - need.memory,
            free_gpus=best.free_gpus - need.gpus,
            instances=best.instances + 1,
        )
    return chosen


def unservable(workers: list[WorkerCapacity], need: Requirement) -> str | None:
    """Why no live worker could ever run an instance of ``need`` (whatever runs on them
    now), or None when one could."""
    able = [w for w in workers if need.backend in w.backends]
    if not able:
        advertised = sorted({b for w in workers for b in w.backends})
        return (
            f"no live worker can run backend {need.backend!r} "
            f"(live workers run: {', '.join(advertised) or 'none; no worker is registered'})"
        )
    if not any(w.total_gpus >= need.gpus for w in able):
        most = max(w.total_gpus for w in able)
        return (
            f"no live worker with backend {need.backend!r} has {need.gpus} GPU(s) "
            f"(the most is {most})"
        )
    return None
