from __future__ import annotations

from sllm.head.placement import Requirement, WorkerCapacity, place
from sllm.head.routing import pick_instance
from sllm.head.scaling import InstanceLoad

GB = 1 << 30


def worker(node: str, instances: int = 0, mem: int = 8 * GB, gpus: int = 0) -> WorkerCapacity:
    return WorkerCapacity(node, ("dummy", "transformers"), mem, gpus, instances)


def nodes(workers: list[WorkerCapacity], need: Requirement, count: int = 1) -> list[str]:
    return [p.node_id for p in place(workers, need, count)]


def test_place_prefers_fewest_instances_then_most_memory() -> None:
    workers = [worker("a", 2), worker("b", 0, 4 * GB), worker("c", 0, 16 * GB)]
    assert nodes(workers, Requirement("dummy")) == ["c"]


def test_place_spreads_several_instances() -> None:
    assert sorted(nodes([worker("a"), worker("b")], Requirement("dummy"), 2)) == ["a", "b"]


def test_place_respects_memory_gpus_and_backend() -> None:
    workers = [worker("small", mem=1 * GB), worker("gpu", gpus=1), worker("big", mem=32 * GB)]
    assert nodes(workers, Requirement("dummy", memory=2 * GB)) == ["big"]
    assert nodes(workers, Requirement("dummy", gpus=1)) == ["gpu"]
    assert nodes(workers, Requirement("dummy", gpus=1), 2) == ["gpu"]
    assert nodes(workers, Requirement("vllm")) == []


def test_routing_picks_least_outstanding_ready_with_room() -> None:
    insts = [
        InstanceLoad("a", "ready", 3, 0),
        InstanceLoad("b", "ready", 1, 0),
        InstanceLoad("c", "starting", 0, 0),
        InstanceLoad("d", "draining", 0, 0),
    ]
    picked = pick_instance(insts, max_concurrency=4)
    assert picked is not None and picked.id == "b"
    assert pick_instance([InstanceLoad("a", "ready", 4, 0)], max_concurrency=4) is None
    assert pick_instance([], 4) is None


def test_unservable_names_the_missing_backend_or_gpus() -> None:
    from sllm.head.placement import unservable

    cpu = WorkerCapacity("a", ("dummy",), free_memory=1, free_gpus=0, instances=3)
    gpu = WorkerCapacity("b", ("vllm",), free_memory=1, free_gpus=0, instances=1, total_gpus=2)
    assert unservable([cpu], Requirement("dummy")) is None
    assert "'vllm'" in (unservable([cpu], Requirement("vllm", gpus=1)) or "")
    assert "no worker is registered" in (unservable([], Requirement("dummy")) or "")
    # Busy GPUs are a wait, not a refusal: only the total counts.
    assert unservable([cpu, gpu], Requirement("vllm", gpus=2)) is None
    assert "4 GPU(s) (the most is 2)" in (unservable([gpu], Requirement("vllm", gpus=4)) or "")


def test_unservable_says_why_the_workers_cannot_run_the_backend() -> None:
    from sllm.head.placement import unservable

    why = "the vllm backend needs vllm, not installed on this worker"
    cpu = WorkerCapacity("a", ("dummy",), 1, 0, 0, unavailable={"vllm": why})
    assert (unservable([cpu, cpu], Requirement("vllm")) or "").endswith(
        f"(live workers run: dummy); {why}"
    )
