"""The partition test's checker finds each broken promise in a record."""

from __future__ import annotations

from tests.faults.recorder import Outcome
from tests.hosts.history import check, orphans


def outcome(rid: str, **fields: object) -> Outcome:
    base: dict[str, object] = {"label": "", "request_id": rid, "started": 0.0, "ended": 1.0,
                               "status": 200}  # fmt: skip
    return Outcome(**{**base, **fields})  # type: ignore[arg-type]


def test_a_clean_record_passes_and_is_summed_up() -> None:
    seen = check(
        [
            outcome("a", chunks=13, tokens=12),
            outcome("b"),
            outcome("c", status=503, code="service_unavailable", error="down"),
        ],
        tokens=12,
        deadline=65,
    )
    assert seen.violations == [] and seen.ok == 2 and seen.requests == 3
    assert seen.summary() == "2/3 ok, failed: 1 service_unavailable, slowest 1.0 s"


def test_each_broken_promise_is_named() -> None:
    seen = check(
        [
            outcome("dup", chunks=14, tokens=13),  # a chunk twice
            outcome("gone", status=0, error="ReadTimeout"),  # no answer
            outcome("late", ended=70.0),
            outcome("cut", chunks=3, error="the stream ended without [DONE]"),
            outcome("twice"),
            outcome("twice"),
        ],
        tokens=12,
        deadline=65,
    )
    said = "\n".join(seen.violations)
    for expected in ("13 pieces of text", "no answer", "past its deadline", "no error event",
                     "twice: 2 outcomes"):  # fmt: skip
        assert expected in said, said


def test_orphans_are_instances_redis_and_the_workers_disagree_on() -> None:
    status = {"workers": [{"node_id": "w1", "instances": [{"instance_id": "i1"},
                                                          {"instance_id": "i9"}]},
                          {"node_id": "w2", "instances": []}]}  # fmt: skip
    known = {
        "i1": {"node_id": "w1", "state": "ready"},
        "i2": {"node_id": "w2", "state": "ready"},  # w2 does not run it
        "i3": {"node_id": "w2", "state": "failed"},  # ended: nobody need run it
    }
    assert orphans(status, known) == [
        "i2 on w2 (ready) not reported by its worker",
        "i9 runs on w1 unknown to Redis",
    ]
