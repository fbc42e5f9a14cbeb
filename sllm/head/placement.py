"""Which worker gets a new instance: the one where it is estimated to be ready
soonest. Pure.

The estimate adds the process start (a warm process, or a new interpreter), the load
of the weights from the fastest tier the worker has them in (its host memory, its
disk, another worker's store to fetch them from, or none of these: converted from the
source and stored first), and a penalty for what the worker is
busy with (its instances, its CPU) and for too little free memory to load into. The
constants are this project's measurements on a 2-core CPU VM with the demo model
(``benchmarks/cold_start.py``, ``benchmarks/load.py``); they rank workers, they do not
promise times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Tier = Literal["memory", "disk", "peer", "none"]

WARM_PROCESS_START = 0.05  # a warm process takes the instance
COLD_PROCESS_START = 3.0  # a new interpreter imports torch and transformers
LOAD_BYTES_PER_S: dict[Tier, float] = {"memory": 4e9, "disk": 1e9}
# Nothing stored: fetched or converted and stored, then loaded from disk.
INGEST_BYTES_PER_S = 0.2e9
# Stored by another worker: fetched from it, synced and verified, then loaded from disk,
# at the speed of the worker's last fetch when it reports one, else this figure
# (benchmarks/peer_fetch.py between two hosts of the 2-core VM: 0.38 GB/s, half of a
# plain copy's; a fast NIC and more cores give more).
PEER_BYTES_PER_S = 0.35e9
UNKNOWN_BYTES = 1_000_000_000  # a model no worker has stored yet
PER_INSTANCE = 0.5  # each instance already running there shares its CPU and memory
# A fully busy CPU, scaled by its use: at most one instance's worth, as the figure is a
# noisy sample (workers sharing one machine report different ones), so it never undoes
# the spreading of instances.
BUSY_CPU = 0.5
SHORT_OF_MEMORY = 10.0  # free memory below what is loaded: other things get evicted


@dataclass(frozen=True)
class Stored:
    tier: Literal["memory", "disk"]
    bytes: int


@dataclass(frozen=True)
class WorkerCapacity:
    node_id: str
    backends: tuple[str, ...]
    free_memory: int
    free_gpus: int
    instances: int
    total_gpus: int = 0
    # Deployed source -> where the worker has it stored (its fastest tier).
    cache: Mapping[str, Stored] = field(default_factory=dict)
    # Idle warm processes by pool (Backend.warm_pool).
    warm: Mapping[str, int] = field(default_factory=dict)
    cpu_percent: float = 0.0
    # How fast its last fetch of a model from a peer went (bytes/s), if it made one.
    peer_fetch_bytes_per_s: float | None = None
    # Backend -> why the worker cannot run it (as it reports).
    unavailable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Requirement:
    backend: str
    memory: int = 0
    gpus: int = 0
    # What the instance loads (backend_config's pretrained_model_name_or_path) and the
    # largest size any worker reports for it; None when no worker has it.
    source: str | None = None
    weights_bytes: int | None = None
    # The pool of warm processes the backend starts from; None: it starts none.
    warm_pool: str | None = "sllm"


@dataclass(frozen=True)
class Estimate:
    seconds: float
    tier: Tier
    process_start: float
    load: float
    penalty: float


@dataclass(frozen=True)
class Placement:
    node_id: str
    estimate: Estimate
    runner_up: Estimate | None = None  # the next best worker's, for the log
    # Other workers that hold the model stored, fastest tier first: where it fetches
    # the model from (tier "peer").
    peers: tuple[str, ...] = ()


def fits(worker: WorkerCapacity, need: Requirement) -> bool:
    return (
        need.backend in worker.backends
        and worker.free_memory >= need.memory
        and worker.free_gpus >= need.gpus
    )


def memory_short(worker: WorkerCapacity, need: Requirement) -> bool:
    """Whether ``worker`` has less memory free than ``need``'s weights take, their size
    known (stored there, or reported by any worker) and not already in memory there."""
    if need.source is None:
        return False
    stored = worker.cache.get(need.source)
    if stored is not None and stored.tier == "memory":
        return False
    size = stored.bytes if stored is not None else need.weights_bytes
    return size is not None and worker.free_memory < size


def estimate_ready(
    worker: WorkerCapacity, need: Requirement, held_elsewhere: bool = False
) -> Estimate:
    """How long until an instance of ``need`` started on ``worker`` would be ready;
    ``held_elsewhere``: another worker has the model stored (to fetch it from)."""
    stored = worker.cache.get(need.source) if need.source is not None else None
    size = stored.bytes if stored else need.weights_bytes or UNKNOWN_BYTES
    tier: Tier = "none"
    if need.source is None:  # nothing the head knows of to load (the dummy backend)
        size, load = 0, 0.0
    elif stored is None and held_elsewhere:
        tier = "peer"
        rate = worker.peer_fetch_bytes_per_s or PEER_BYTES_PER_S
        load = size / rate + size / LOAD_BYTES_PER_S["disk"]
    elif stored is None:
        load = size / INGEST_BYTES_PER_S + size / LOAD_BYTES_PER_S["disk"]
    else:
        tier = stored.tier
        load = size / LOAD_BYTES_PER_S[tier]
    warm = need.warm_pool is not None and worker.warm.get(need.warm_pool, 0) > 0
    start = WARM_PROCESS_START if warm else COLD_PROCESS_START
    penalty = worker.instances * PER_INSTANCE + BUSY_CPU * min(worker.cpu_percent, 100.0) / 100
    if tier != "memory" and worker.free_memory < size:
        penalty += SHORT_OF_MEMORY
    return Estimate(start + load + penalty, tier, start, load, penalty)


def place(workers: list[WorkerCapacity], need: Requirement, count: int = 1) -> list[Placement]:
    """Where to start up to ``count`` new instances: among the workers that fit, the
    lowest estimate, then fewest instances, most free memory, node id. Each choice uses
    up its share (memory, GPUs, a warm process, one more instance) before the next is
    made, so one pass spreads instances. Fewer than ``count`` means nothing else fits."""
    pool = {w.node_id: w for w in workers}
    holders = _holders(workers, need)
    chosen: list[Placement] = []
    for _ in range(count):
        ranked = sorted(
            (
                (estimate_ready(w, need, any(h != w.node_id for h in holders)), w)
                for w in pool.values()
                if fits(w, need)
            ),
            key=lambda e: (e[0].seconds, e[1].instances, -e[1].free_memory, e[1].node_id),
        )
        if not ranked:
            break
        (estimate, best), runner_up = ranked[0], ranked[1][0] if len(ranked) > 1 else None
        peers = tuple(h for h in holders if h != best.node_id) if estimate.tier == "peer" else ()
        chosen.append(Placement(best.node_id, estimate, runner_up, peers))
        pool[best.node_id] = _taken(best, need)
    return chosen


def _holders(workers: list[WorkerCapacity], need: Requirement) -> list[str]:
    """The workers that hold ``need``'s model stored, in memory before on disk."""
    if need.source is None:
        return []
    held = [(w.cache[need.source].tier != "memory", w.node_id) for w in workers
            if need.source in w.cache]  # fmt: skip
    return [node for _, node in sorted(held)]


def _taken(worker: WorkerCapacity, need: Requirement) -> WorkerCapacity:
    """What ``worker`` has left once an instance of ``need`` starts there."""
    return replace(
        worker,
        free_memory=worker.free_memory - need.memory,
        free_gpus=worker.free_gpus - need.gpus,
        instances=worker.instances + 1,
        warm=_one_warm_fewer(worker.warm, need.warm_pool),
    )


def _one_warm_fewer(warm: Mapping[str, int], pool: str | None) -> Mapping[str, int]:
    if pool is None or warm.get(pool, 0) <= 0:
        return warm
    return {**warm, pool: warm[pool] - 1}


def after_placing(
    workers: list[WorkerCapacity], need: Requirement, placements: list[Placement]
) -> list[WorkerCapacity]:
    """``workers`` with what ``placements`` take used up: the room the next model's
    placements see in the same pass."""
    out = list(workers)
    for p in placements:
        i = next(i for i, w in enumerate(out) if w.node_id == p.node_id)
        out[i] = _taken(out[i], need)
    return out


def unservable(workers: list[WorkerCapacity], need: Requirement) -> str | None:
    """Why no live worker could ever run an instance of ``need`` (whatever runs on them
    now), or None when one could."""
    able = [w for w in workers if need.backend in w.backends]
    if not able:
        advertised = sorted({b for w in workers for b in w.backends})
        reasons = sorted(
            {w.unavailable[need.backend] for w in workers if need.backend in w.unavailable}
        )
        none = "none" if workers else "none; no worker is registered"
        return (
            f"no live worker can run backend {need.backend!r} "
            f"(live workers run: {', '.join(advertised) or none})"
            + "".join(f"; {why}" for why in reasons[:3])
        )
    if not any(w.total_gpus >= need.gpus for w in able):
        most = max(w.total_gpus for w in able)
        return (
            f"no live worker with backend {need.backend!r} has {need.gpus} GPU(s) "
            f"(the most is {most})"
        )
    return None
