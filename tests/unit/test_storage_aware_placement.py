"""Placement by estimated time to ready: the cache tier a worker has the model in, a
warm process, and how busy the worker is."""

from __future__ import annotations

import dataclasses

import pytest

from sllm.head.placement import (
    COLD_PROCESS_START,
    UNKNOWN_BYTES,
    Requirement,
    Stored,
    WorkerCapacity,
    after_placing,
    estimate_ready,
    place,
)

GB = 1_000_000_000
MODEL = "smollm2-135m"
NEED = Requirement("transformers", source=MODEL, weights_bytes=GB)


def worker(
    node: str,
    tier: str | None = None,
    *,
    instances: int = 0,
    warm: int = 1,
    cpu: float = 0.0,
    free: int = 16 * GB,
) -> WorkerCapacity:
    cache = {MODEL: Stored(tier, GB)} if tier else {}  # type: ignore[arg-type]
    return WorkerCapacity(
        node, ("transformers",), free, 0, instances, cache=cache, warm={"sllm": warm},
        cpu_percent=cpu,
    )  # fmt: skip


def chosen(workers: list[WorkerCapacity], need: Requirement = NEED) -> str:
    [placement] = place(workers, need)
    return placement.node_id


def test_memory_beats_disk_beats_nothing_stored() -> None:
    workers = [worker("none"), worker("disk", "disk"), worker("memory", "memory")]
    assert chosen(workers) == "memory"
    assert chosen(workers[:2]) == "disk"
    tiers = {w.node_id: estimate_ready(w, NEED).tier for w in workers}
    assert tiers == {"none": "none", "disk": "disk", "memory": "memory"}


def test_a_busy_worker_with_the_model_on_disk_loses_to_an_idle_one_with_it_in_memory() -> None:
    busy = worker("busy-disk", "disk", instances=3, cpu=90)
    assert chosen([busy, worker("idle-memory", "memory")]) == "idle-memory"


def test_a_hugely_loaded_worker_loses_even_with_the_model_in_memory() -> None:
    loaded = worker("loaded-memory", "memory", instances=12, cpu=100)
    assert chosen([loaded, worker("idle-disk", "disk")]) == "idle-disk"


def test_a_warm_process_beats_a_cold_interpreter() -> None:
    cold, warm = worker("cold", "disk", warm=0), worker("warm", "disk", warm=1)
    assert chosen([cold, warm]) == "warm"
    gap = estimate_ready(cold, NEED).seconds - estimate_ready(warm, NEED).seconds
    assert gap == pytest.approx(COLD_PROCESS_START - 0.05)


def test_a_backend_that_starts_its_own_interpreter_gains_nothing_from_warm_processes() -> None:
    vllm = dataclasses.replace(NEED, warm_pool=None)
    warm, cold = worker("warm", "disk", warm=2), worker("cold", "disk", warm=0)
    assert estimate_ready(warm, vllm) == estimate_ready(cold, vllm)
    placements = place([warm], vllm, 2)
    assert [p.estimate.process_start for p in placements] == [COLD_PROCESS_START] * 2


def test_too_little_free_memory_to_load_into_counts_against_a_worker() -> None:
    short = worker("short", "disk", free=GB // 2)
    assert chosen([short, worker("roomy", "disk")]) == "roomy"
    # What is already in host memory needs no room to be loaded into.
    in_memory = worker("short-memory", "memory", free=GB // 2)
    assert estimate_ready(in_memory, NEED).penalty == 0


def test_a_worker_that_does_not_fit_is_never_chosen() -> None:
    gpu_need = dataclasses.replace(NEED, gpus=1)
    assert place([worker("memory-but-no-gpu", "memory")], gpu_need) == []


def test_several_instances_spread_and_use_up_warm_processes() -> None:
    a, b = worker("a", "memory", warm=1), worker("b", "memory", warm=1)
    placements = place([a, b], NEED, 3)
    assert sorted(p.node_id for p in placements[:2]) == ["a", "b"]
    # The third finds no warm process left anywhere: a cold start, on either.
    assert placements[2].estimate.process_start == COLD_PROCESS_START
    assert placements[0].runner_up is not None


def test_an_unknown_size_uses_the_default_and_estimates_grow_with_size() -> None:
    unknown = Requirement("transformers", source="never-stored")
    assert estimate_ready(worker("a"), unknown).load == pytest.approx(
        estimate_ready(worker("a"), dataclasses.replace(unknown, weights_bytes=UNKNOWN_BYTES)).load
    )
    sizes = [GB // 10, GB, 10 * GB]
    for tier in (None, "disk"):
        times = [
            estimate_ready(
                dataclasses.replace(worker("a", tier), cache={MODEL: Stored("disk", n)})
                if tier
                else worker("a"),
                dataclasses.replace(NEED, weights_bytes=n),
            ).seconds
            for n in sizes
        ]
        assert times == sorted(times) and times[0] < times[-1]


def test_a_model_with_nothing_to_load_ranks_by_load_alone() -> None:
    need = Requirement("transformers")  # no source (the dummy backend's case)
    e = estimate_ready(worker("a", instances=2), need)
    assert (e.tier, e.load) == ("none", 0.0) and e.penalty > 0


def test_noisy_cpu_readings_never_stop_instances_from_spreading() -> None:
    # Two workers on one machine sample its CPU at different moments.
    busy, calm = worker("busy", "disk", cpu=100, warm=0), worker("calm", "disk", cpu=0, warm=0)
    assert sorted(p.node_id for p in place([busy, calm], NEED, 2)) == ["busy", "calm"]


def test_placements_earlier_in_a_pass_use_up_room_for_later_models() -> None:
    one_gpu = [
        dataclasses.replace(worker("a", "memory"), free_gpus=1),
        dataclasses.replace(worker("b"), free_gpus=1),
    ]
    need = dataclasses.replace(NEED, gpus=1)
    first = place(one_gpu, need)
    assert [p.node_id for p in first] == ["a"]
    room = after_placing(one_gpu, need, first)
    assert {w.node_id: (w.free_gpus, w.warm["sllm"], w.instances) for w in room} == {
        "a": (0, 0, 1),
        "b": (1, 1, 0),
    }
    other_model = dataclasses.replace(need, source="other")
    assert [p.node_id for p in place(room, other_model)] == ["b"]


def test_a_worker_fetches_from_peers_that_hold_the_model_fastest_tier_first() -> None:
    """A busy holder (memory) and one on disk: the new instance goes to an idle worker
    that fetches the model from them, not converting it from its source."""
    on_disk = worker("on-disk", "disk", instances=9)
    in_memory = worker("in-memory", "memory", instances=9)
    empty = worker("empty")
    [placement] = place([on_disk, empty, in_memory], NEED)
    assert (placement.node_id, placement.estimate.tier) == ("empty", "peer")
    assert placement.peers == ("in-memory", "on-disk")
    assert (
        estimate_ready(empty, NEED, held_elsewhere=True).seconds
        < estimate_ready(empty, NEED).seconds
    )
    # Nobody holds it: converted from its source, no peers.
    [alone] = place([worker("a"), worker("b")], NEED)
    assert (alone.estimate.tier, alone.peers) == ("none", ())
    # A holder that is chosen itself loads from its own tier: no peers named.
    [own] = place([worker("holder", "disk"), worker("other")], NEED)
    assert (own.node_id, own.estimate.tier, own.peers) == ("holder", "disk", ())


def test_a_peer_fetch_is_estimated_at_the_speed_the_worker_measured() -> None:
    """Two workers without the model, a third holding it: the one whose last fetch
    from a peer went fast is chosen, and its estimate uses its own figure."""
    holder = worker("holder", "disk", instances=9)
    slow = dataclasses.replace(worker("slow"), peer_fetch_bytes_per_s=0.01 * GB)
    fast = dataclasses.replace(worker("fast"), peer_fetch_bytes_per_s=4 * GB)
    [placement] = place([holder, slow, fast], NEED)
    assert (placement.node_id, placement.estimate.tier) == ("fast", "peer")
    assert estimate_ready(slow, NEED, held_elsewhere=True).load == pytest.approx(
        GB / (0.01 * GB) + GB / 1e9
    )
