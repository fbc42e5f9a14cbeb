"""When probing makes a worker suspected."""

from __future__ import annotations

from sllm.head.worker_health import TIMEOUTS_TO_SUSPECT, judge


def test_a_refused_connection_is_suspected_at_once() -> None:
    assert judge(0, "refused") == (1, True)


def test_timeouts_take_several_in_a_row_and_an_answer_resets_them() -> None:
    assert TIMEOUTS_TO_SUSPECT == 3
    assert judge(0, "timeout") == (1, False)
    assert judge(1, "ok") == (0, False)
    assert judge(1, "error") == (2, False)
    assert judge(2, "timeout") == (3, True)
