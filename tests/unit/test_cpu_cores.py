"""Which cores a CPU instance binds its threads to."""

from __future__ import annotations

from sllm.worker.cpu_cores import bind_list, choose_cores, default_threads


def test_instances_started_one_after_another_bind_disjoint_cores() -> None:
    first = choose_cores(8, [], 3)
    second = choose_cores(8, [first], 3)
    assert first == (0, 1, 2) and second == (3, 4, 5)
    # Past what is free, the least shared cores are shared.
    third = choose_cores(8, [first, second], 3)
    assert third == (0, 6, 7)


def test_on_two_cores_two_instances_take_one_each() -> None:
    assert default_threads(2) == 1
    first = choose_cores(2, [], default_threads(2))
    assert first == (0,) and choose_cores(2, [first], 1) == (1,)


def test_wants_are_bounded_by_the_machine() -> None:
    assert choose_cores(2, [], 5) == (0, 1)
    assert choose_cores(4, [], 0) == (0,)
    assert default_threads(1) == 1 and default_threads(16) == 7
    assert bind_list((0, 2, 3)) == "0,2,3"
