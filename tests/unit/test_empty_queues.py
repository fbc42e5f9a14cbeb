"""A head knows a model's queue empty from a claim that found nothing until a push onto
it is announced, whichever of the two answers reached it first."""

from __future__ import annotations

from sllm.head.empty_queues import EmptyQueues


def test_a_claim_that_found_nothing_holds_until_a_push_is_announced() -> None:
    queues = EmptyQueues()
    assert "m" not in queues
    queues.found_empty("m", queues.before_claim("m"))
    assert "m" in queues and "other" not in queues
    queues.queued("m")
    assert "m" not in queues
    queues.found_empty("m", queues.before_claim("m"))
    assert "m" in queues


def test_an_announcement_read_before_the_claims_answer_still_counts() -> None:
    queues = EmptyQueues()
    before = queues.before_claim("m")
    queues.queued("m")  # pushed after the claim ran; its event came in first
    queues.found_empty("m", before)
    assert "m" not in queues


def test_forgotten_when_a_look_is_due_or_announcements_were_lost() -> None:
    queues = EmptyQueues()
    for model in ("a", "b"):
        queues.found_empty(model, queues.before_claim(model))
    queues.forget("a")
    assert "a" not in queues and "b" in queues
    queues.forget()
    assert "b" not in queues


def test_nothing_is_kept_of_a_model_dropped() -> None:
    queues = EmptyQueues()
    queues.queued("m")
    queues.found_empty("m", queues.before_claim("m"))
    queues.drop("m")
    assert "m" not in queues and queues.before_claim("m") == 0
    assert not queues._announced and not queues._found
