"""Making room (``sllm.head.room``): when a new instance should start on a worker whose
GPUs another model's instances hold, their requests moved and the instances stopped."""

from __future__ import annotations

from sllm.head.placement import Requirement, Stored, WorkerCapacity, place
from sllm.head.room import MOVE_SECONDS, STOP_SECONDS, Occupant, make_room

GB = 1 << 30
SOURCE = "org/big"
NEED = Requirement("vllm", gpus=1, source=SOURCE, weights_bytes=16 * GB, warm_pool=None)


def gpu_worker(node: str, free_gpus: int, instances: int, tier: str | None) -> WorkerCapacity:
    cache = {SOURCE: Stored(tier, 16 * GB)} if tier else {}  # type: ignore[arg-type]
    return WorkerCapacity(node, ("vllm",), 64 * GB, free_gpus, instances, 2, cache)


def occupant(name: str, node: str, requests: int = 0, **kw: object) -> Occupant:
    return Occupant(name, node, "other", 1, requests, **{"movable": True, **kw})  # type: ignore[arg-type]


def instead(workers: list[WorkerCapacity]) -> float | None:
    placed = place(workers, NEED)
    return placed[0].estimate.seconds if placed else None


def test_an_idle_instance_gives_up_the_worker_that_holds_the_model_in_memory() -> None:
    # "hot" has the model in host memory, its GPUs held by another model's idle
    # instances; "cold" has a free GPU but must fetch the model from "hot".
    hot = gpu_worker("hot", 0, 2, "memory")
    cold = gpu_worker("cold", 1, 1, None)
    workers = [hot, cold]
    plain = instead(workers)
    assert plain is not None and plain > 40  # 16 GB from a peer, then from disk
    occupants = [occupant("busy", "hot", requests=3), occupant("idle", "hot")]
    plan = make_room(workers, NEED, occupants, waiting=2, instead=plain)
    assert plan is not None
    # The emptiest goes: nothing to move, one stop, then a load from memory.
    assert (plan.node_id, plan.evict, plan.moved_requests) == ("hot", ("idle",), 0)
    assert plan.estimate.tier == "memory"
    assert plan.seconds == STOP_SECONDS + plan.estimate.seconds < plain
    assert "stopping idle" in plan.summary("big") and "against" in plan.summary("big")


def test_nothing_is_stopped_when_a_free_gpu_is_as_fast() -> None:
    workers = [gpu_worker("hot", 0, 1, "memory"), gpu_worker("also", 1, 0, "memory")]
    plan = make_room(workers, NEED, [occupant("idle", "hot")], 1, instead(workers))
    assert plan is None


def test_where_nothing_fits_busy_instances_move_when_their_model_has_room() -> None:
    workers = [gpu_worker("hot", 0, 1, "disk")]
    assert instead(workers) is None
    plan = make_room(workers, NEED, [occupant("busy", "hot", requests=2)], 1, None)
    assert plan is not None and plan.evict == ("busy",) and plan.moved_requests == 2
    assert plan.seconds == STOP_SECONDS + MOVE_SECONDS + plan.estimate.seconds
    # Requests with nowhere to go (or its model waiting for it) keep it.
    stuck = [occupant("busy", "hot", requests=2, movable=False)]
    assert make_room(workers, NEED, stuck, 1, None) is None


def test_moving_many_streams_for_one_request_does_not_pay() -> None:
    hot = gpu_worker("hot", 0, 1, "memory")
    cold = gpu_worker("cold", 1, 0, "disk")  # 16 GB from disk: about 16 s
    plain = instead([hot, cold])
    assert plain is not None
    crowded = [occupant("busy", "hot", requests=30)]
    assert make_room([hot, cold], NEED, crowded, waiting=1, instead=plain) is None
    # Many waiting requests make the same move worth it.
    plan = make_room([hot, cold], NEED, crowded, waiting=10, instead=plain)
    assert plan is not None and plan.evict == ("busy",)


def test_gpus_are_freed_emptiest_first_until_the_instance_fits() -> None:
    need = Requirement("vllm", gpus=2, source=SOURCE, weights_bytes=16 * GB, warm_pool=None)
    workers = [gpu_worker("hot", 0, 3, "memory")]
    occupants = [
        occupant("c", "hot", requests=5),
        occupant("a", "hot", requests=1),
        occupant("b", "hot", requests=0),
    ]
    plan = make_room(workers, need, occupants, 1, None)
    assert plan is not None and plan.evict == ("b", "a") and plan.moved_requests == 1
    # When the next emptiest may not go, no fuller one is taken instead.
    occupants[1] = occupant("a", "hot", requests=1, movable=False)
    assert make_room(workers, need, occupants, 1, None) is None


def test_room_already_being_made_is_waited_for_not_made_twice() -> None:
    workers = [gpu_worker("hot", 0, 2, "memory")]
    occupants = [occupant("going", "hot", requests=1, leaving=True), occupant("idle", "hot")]
    plan = make_room(workers, NEED, occupants, 1, None)
    assert plan is not None and plan.evict == () and plan.node_id == "hot"
    assert "already leaving" in plan.summary("big")
