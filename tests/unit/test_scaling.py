from __future__ import annotations

import importlib
import sys

import pytest

from sllm.head.scaling import InstanceLoad, ScalingPolicy, decide, desired_instances

POLICY = ScalingPolicy(
    min_instances=0, max_instances=4, queue_per_instance_threshold=5, keep_alive=60
)


@pytest.mark.parametrize(
    ("queued", "in_flight", "want"),
    [(0, 0, 0), (1, 0, 1), (5, 0, 1), (6, 0, 2), (0, 6, 2), (3, 3, 2), (100, 0, 4)],
)
def test_desired_counts_queued_and_in_flight_within_bounds(
    queued: int, in_flight: int, want: int
) -> None:
    assert desired_instances(queued, in_flight, POLICY) == want


def test_min_instances_holds_when_idle() -> None:
    policy = ScalingPolicy(2, 4, 5, 60)
    assert desired_instances(0, 0, policy) == 2


def test_starting_instances_count_so_a_burst_scales_once() -> None:
    starting = [InstanceLoad("a", "starting", 0, 0.0)]
    assert decide(POLICY, 3, starting, now=10).start == 0
    assert decide(POLICY, 3, [], now=10).start == 1


def test_idle_instance_stops_only_after_keep_alive() -> None:
    idle = [InstanceLoad("a", "ready", 0, last_active=100.0)]
    assert decide(POLICY, 0, idle, now=159.0).stop == []
    assert decide(POLICY, 0, idle, now=160.0).stop == ["a"]


def test_busy_instance_never_stops() -> None:
    busy = [InstanceLoad("a", "ready", 1, last_active=0.0)]
    assert decide(POLICY, 0, busy, now=1e6).stop == []


def test_long_generation_with_empty_queue_is_busy() -> None:
    running = [InstanceLoad("a", "ready", 5, 0.0), InstanceLoad("b", "ready", 5, 0.0)]
    assert decide(POLICY, 0, running, now=1e6).desired == 2


def test_surplus_stops_oldest_idle_first() -> None:
    insts = [
        InstanceLoad("new", "ready", 0, last_active=900.0),
        InstanceLoad("old", "ready", 0, last_active=100.0),
        InstanceLoad("busy", "ready", 2, last_active=0.0),
    ]
    assert decide(POLICY, 0, insts, now=1000.0).stop == ["old", "new"]
    assert decide(POLICY, 4, insts, now=1000.0).stop == ["old"]


def test_deleting_model_stops_every_idle_instance_at_once() -> None:
    insts = [InstanceLoad("a", "ready", 0, 999.0), InstanceLoad("b", "ready", 1, 999.0)]
    decision = decide(POLICY, 0, insts, now=1000.0, deleting=True)
    assert decision.stop == ["a"] and decision.start == 0


def test_idle_instances_that_can_sleep_sleep_and_the_others_stop() -> None:
    insts = [
        InstanceLoad("gpu", "ready", 0, last_active=100.0, can_sleep=True),
        InstanceLoad("cpu", "ready", 0, last_active=200.0),
    ]
    decision = decide(POLICY, 0, insts, now=1000.0)
    assert decision.sleep == ["gpu"] and decision.stop == ["cpu"]
    # Not before keep_alive, and never a busy one.
    assert decide(POLICY, 0, insts, now=150.0).sleep == []
    busy = [InstanceLoad("gpu", "ready", 1, last_active=0.0, can_sleep=True)]
    assert decide(POLICY, 0, busy, now=1e6).sleep == []


def test_sleeping_instances_are_woken_before_any_start() -> None:
    insts = [
        InstanceLoad("old", "sleeping", 0, last_active=100.0),
        InstanceLoad("new", "sleeping", 0, last_active=900.0),
    ]
    # Asleep, an instance serves nothing: an idle model asleep wants nothing done.
    assert decide(POLICY, 0, insts, now=1000.0) == decide(POLICY, 0, [], now=1000.0)
    one = decide(POLICY, 1, insts, now=1000.0)
    assert one.wake == ["new"] and one.start == 0
    three = decide(POLICY, 15, insts, now=1000.0)
    assert three.wake == ["new", "old"] and three.start == 1
    # A waking instance is live: the next pass does not wake another for the same load.
    waking = [InstanceLoad("new", "waking", 0, 900.0), InstanceLoad("old", "sleeping", 0, 100.0)]
    assert decide(POLICY, 1, waking, now=1000.0).wake == []


def test_deleting_model_stops_its_sleeping_instances_too() -> None:
    insts = [InstanceLoad("a", "sleeping", 0, 1.0), InstanceLoad("b", "ready", 0, 999.0)]
    decision = decide(POLICY, 3, insts, now=1000.0, deleting=True)
    assert sorted(decision.stop) == ["a", "b"] and decision.wake == [] and decision.start == 0


def test_pure_decision_modules_import_no_io() -> None:
    for name in (
        "sllm.head.scaling",
        "sllm.head.placement",
        "sllm.head.routing",
        "sllm.worker.sleep_room",
    ):
        for mod in [m for m in sys.modules if m.startswith(("redis", "httpx", "aiohttp"))]:
            del sys.modules[mod]
        sys.modules.pop(name, None)
        importlib.import_module(name)
        leaked = [m for m in sys.modules if m.split(".")[0] in ("redis", "httpx", "aiohttp")]
        assert leaked == [], f"{name} pulled in {leaked}"
