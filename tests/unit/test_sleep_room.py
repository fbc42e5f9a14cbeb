"""Which sleeping instances make room for a new one, within the host memory given."""

from __future__ import annotations

from sllm.worker.sleep_room import Asleep, room_to_sleep

GB = 1_000_000_000
TOTAL = 100 * GB


def test_an_instance_sleeps_when_its_weights_fit() -> None:
    assert room_to_sleep([], 4 * GB, limit=10 * GB, available=50 * GB, total=TOTAL) == []


def test_the_longest_asleep_make_room_first() -> None:
    asleep = [Asleep("new", 4 * GB, since=30.0), Asleep("old", 4 * GB, since=10.0)]
    assert room_to_sleep(asleep, 4 * GB, limit=10 * GB, available=50 * GB, total=TOTAL) == ["old"]
    assert room_to_sleep(asleep, 9 * GB, limit=10 * GB, available=50 * GB, total=TOTAL) == [
        "old",
        "new",
    ]


def test_a_tenth_of_the_machine_stays_free_whatever_the_limit() -> None:
    # 12 GB available, 10 GB kept free: 2 GB of weights at most, after the sleeper goes 5.
    asleep = [Asleep("a", 3 * GB, since=1.0)]
    assert room_to_sleep([], 3 * GB, limit=50 * GB, available=12 * GB, total=TOTAL) is None
    assert room_to_sleep(asleep, 4 * GB, limit=50 * GB, available=12 * GB, total=TOTAL) == ["a"]


def test_weights_larger_than_the_limit_never_sleep() -> None:
    asleep = [Asleep("a", 1 * GB, since=1.0)]
    assert room_to_sleep(asleep, 11 * GB, limit=10 * GB, available=90 * GB, total=TOTAL) is None
    assert room_to_sleep([], 1 * GB, limit=0, available=90 * GB, total=TOTAL) is None
