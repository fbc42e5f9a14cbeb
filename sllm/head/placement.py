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
