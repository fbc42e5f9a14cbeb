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


CPU_NEED = Requirement("transformers", source=SOURCE, weights_bytes=8 * GB, warm_pool=None)


def cpu_worker(node: str, free_memory: int, tier: str | None) -> WorkerCapacity:
    cache = {SOURCE: Stored(tier, 8 * GB)} if tier else {}  # type: ignore[arg-type]
    return WorkerCapacity(node, ("transformers",), free_memory, 0, 1, 0, cache)


def cpu_occupant(name: str, node: str, memory: int, requests: int = 0) -> Occupant:
    return Occupant(name, node, "other", 0, requests, movable=True, memory=memory)


def test_a_cpu_instance_gives_its_memory_to_a_model_stored_on_that_worker() -> None:
    # "hot" has the model on its disk but 4 GB free of the 8 its weights take (another
    # model's idle instance holds 6); "far" has the memory but must fetch the model.
    hot, far = cpu_worker("hot", 4 * GB, "disk"), cpu_worker("far", 64 * GB, None)
    plain = place([hot, far], CPU_NEED)[0].estimate.seconds
    plan = make_room([hot, far], CPU_NEED, [cpu_occupant("idle", "hot", 6 * GB)], 1, plain)
    assert plan is not None and (plan.node_id, plan.evict) == ("hot", ("idle",))
    assert plan.estimate.tier == "disk" and plan.seconds < plain
    # Too little memory would come free: nothing is stopped for nothing.
    assert make_room([hot, far], CPU_NEED, [cpu_occupant("idle", "hot", 2 * GB)], 1, plain) is None
    # The model already in memory there takes none more to load: no room to make.
    warm = cpu_worker("hot", 4 * GB, "memory")
    assert make_room([warm], CPU_NEED, [cpu_occupant("idle", "hot", 6 * GB)], 1, None) is None


def test_only_what_a_start_lacks_is_given_back() -> None:
    # Short of GPUs only: a CPU instance beside the GPU one stays; the GPU one goes.
    workers = [gpu_worker("hot", 0, 2, "memory")]
    occupants = [cpu_occupant("cpu", "hot", 6 * GB), occupant("gpu", "hot", requests=1)]
    plan = make_room(workers, NEED, occupants, 1, None)
    assert plan is not None and plan.evict == ("gpu",)
    # Short of memory only: an instance that holds none of it (a GPU one) stays.
    hot = cpu_worker("hot", 4 * GB, "disk")
    occupants = [occupant("gpu", "hot"), cpu_occupant("cpu", "hot", 6 * GB, requests=1)]
    plan = make_room([hot], CPU_NEED, occupants, 1, None)
    assert plan is not None and plan.evict == ("cpu",) and plan.moved_requests == 1
