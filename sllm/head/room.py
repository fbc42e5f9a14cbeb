"""Making room: whether a new instance should start on a worker whose GPUs (or memory)
another model's instances hold, those instances' requests moved to their model's
other instances (live migration) and the instances stopped, rather than where it
fits now (short of memory there, or far from its model) or, when it fits nowhere,
not at all. Pure.

ServerlessLLM's locality-driven migration: the worker that holds a model in host
memory loads it in a fraction of the time a disk or a peer takes, so freeing it can
give the waiting requests their first token sooner than a free GPU elsewhere, at the
cost of a short gap in the streams that move. The choice weighs both over all the
requests concerned: the new model's waiting requests wait for the instance, the moved
requests each see one migration.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sllm.head.placement import (
    Estimate,
    Requirement,
    WorkerCapacity,
    estimate_ready,
    fits,
    memory_short,
)

# Until an idle instance has stopped and the next pass sees its GPUs free: the stop
# call and one autoscaler pass (``autoscale_interval``, 1 s by default).
STOP_SECONDS = 1.5
# A busy instance's moves before it stops (warm-up rounds and cut-over: a second or
# so); also what each moved request's stream is charged for its gap (bounded by it:
# ``benchmarks/migration.py`` measured 0.05 s for the dummy, 0.38 s median for the demo
# model on transformers).
MOVE_SECONDS = 1.0


@dataclass(frozen=True)
class Occupant:
    """A ready instance of another model, on a worker, that could give it up."""

    instance_id: str
    node_id: str
    model: str
    gpus: int
    requests: int
    # Whether it may go: its requests have room on its model's other ready instances
    # (none when it serves none) and its model has no queued request it would serve.
    movable: bool
    # Already being emptied (``migrating``) or stopped (``draining``): its GPUs come
    # free without anything more asked.
    leaving: bool = False
    # Host memory it gives back when it stops: a CPU instance's weights (0: a GPU
    # instance's are on its GPUs, or their size is not known).
    memory: int = 0


@dataclass(frozen=True)
class RoomPlan:
    node_id: str
    # Instances to empty and stop (the ones leaving already are not repeated).
    evict: tuple[str, ...]
    # When the new instance would be ready there, the wait for the room included.
    seconds: float
    estimate: Estimate
    moved_requests: int
    # The best start without making room (None: it fits nowhere).
    instead: float | None

    def summary(self, model: str) -> str:
        instead = f"{self.instead:.2f} s" if self.instead is not None else "nowhere"
        return (
            f"making room for {model} on {self.node_id}: stopping "
            f"{', '.join(self.evict) or 'nothing more (already leaving)'}, "
            f"{self.moved_requests} request(s) moved; ready in about {self.seconds:.2f} s "
            f"({self.estimate.tier} tier) against {instead} without"
        )


def make_room(
    workers: list[WorkerCapacity],
    need: Requirement,
    occupants: list[Occupant],
    waiting: int,
    instead: float | None,
) -> RoomPlan | None:
    """Where to make room for one instance of ``need``, or None when starting where
    it fits (ready in ``instead`` s; None: nowhere) is as good. ``waiting``: the
    requests that wait for it (at least one is counted). On each worker that runs
    ``need``'s backend, the fewest requests are moved: occupants are taken emptiest
    first until the instance fits; a worker that only fits by moving an occupant that
    may not go is skipped. The plan's cost, ``waiting`` times its wait plus
    MOVE_SECONDS for each moved request, must beat ``waiting`` times ``instead``."""
    waiting = max(waiting, 1)
    best: tuple[float, RoomPlan] | None = None
    for worker in workers:
        if need.backend not in worker.backends or _roomy(worker, need):
            continue  # a worker that fits is ``instead``'s to weigh
        here = [o for o in occupants if o.node_id == worker.node_id]
        held_elsewhere = need.source is not None and any(
            need.source in w.cache for w in workers if w.node_id != worker.node_id
        )
        plan = _plan_on(worker, need, here, held_elsewhere)
        if plan is None:
            continue
        cost = waiting * plan.seconds + MOVE_SECONDS * plan.moved_requests
        if best is None or cost < best[0]:
            best = (cost, replace(plan, instead=instead))
    if best is None or (instead is not None and best[0] >= waiting * instead):
        return None
    return best[1]


def _plan_on(
    worker: WorkerCapacity, need: Requirement, here: list[Occupant], held_elsewhere: bool
) -> RoomPlan | None:
    freed = worker
    evict: list[str] = []
    moved, busy = 0, False
    # What is leaving anyway first, then the emptiest of the rest.
    for o in sorted(here, key=lambda o: (not o.leaving, o.requests, o.instance_id)):
        if _roomy(freed, need):
            break
        if not _gives_what_lacks(o, freed, need):
            continue
        if not o.leaving:
            if not o.movable:
                break  # the emptiest left may not go: nor may any fuller one
            evict.append(o.instance_id)
            moved += o.requests
        busy = busy or o.requests > 0
        freed = replace(
            freed,
            free_gpus=freed.free_gpus + o.gpus,
            free_memory=freed.free_memory + o.memory,
            instances=max(freed.instances - 1, 0),
        )
    if not _roomy(freed, need):
        return None
    estimate = estimate_ready(freed, need, held_elsewhere)
    wait = STOP_SECONDS + (MOVE_SECONDS if busy else 0.0)
    return RoomPlan(worker.node_id, tuple(evict), wait + estimate.seconds, estimate, moved, None)


def _roomy(worker: WorkerCapacity, need: Requirement) -> bool:
    """Room enough: the instance fits, with the memory its weights take."""
    return fits(worker, need) and not memory_short(worker, need)


def _gives_what_lacks(o: Occupant, worker: WorkerCapacity, need: Requirement) -> bool:
    """Whether stopping ``o`` gives back something the start lacks on ``worker``."""
    return bool(o.gpus and worker.free_gpus < need.gpus) or bool(
        o.memory and memory_short(worker, need)
    )
