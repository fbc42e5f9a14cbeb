"""What the gateway relays of a stream, and the request that resumes it."""

from __future__ import annotations

from typing import Any

from sllm.head.stream_resume import CONTINUE_FIELD, Relay, continuation, goes_on, resumable


def chat_chunk(cid: str, delta: dict[str, Any], created: int = 1) -> dict[str, Any]:
    return {"id": cid, "created": created, "choices": [{"index": 0, "delta": delta}]}


def test_only_single_choice_streams_of_text_are_resumable() -> None:
    chat = {"stream": True, "messages": []}
    assert resumable("/v1/chat/completions", chat)
    assert not resumable("/v1/chat/completions", {**chat, "n": 2})
    assert not resumable("/v1/chat/completions", {**chat, "stream": False})
    assert resumable("/v1/completions", {"stream": True, "prompt": "p"})
    assert not resumable("/v1/completions", {"stream": True, "prompt": ["p", "q"]})
    assert not resumable("/v1/completions", {"stream": True, "prompt": "p", "echo": True})
    assert not resumable("/v1/embeddings", {"stream": True})


def test_a_broken_stream_goes_on_from_its_output_or_starts_over_if_none_was_sent() -> None:
    limit = {"resumes": 0, "limit": 3}
    # The instance went away mid-stream: go on from what was relayed, where faithful.
    assert goes_on("stream_interrupted", lost=False, relayed=2, faithful=True, **limit)
    assert not goes_on("stream_interrupted", lost=False, relayed=2, faithful=False, **limit)
    # Results lost (cut subscription) before any output: start over, even when a
    # continuation would not be faithful (n > 1), since the client has seen nothing.
    assert goes_on("stream_interrupted", lost=True, relayed=0, faithful=False, **limit)
    # Every attempt failed before any output: the request itself is what fails.
    assert not goes_on("attempts_exhausted", lost=False, relayed=0, faithful=True, **limit)
    # Not a broken stream, or resumed too often already.
    assert not goes_on("invalid_request", lost=False, relayed=2, faithful=True, **limit)
    assert not goes_on(
        "stream_interrupted", lost=True, relayed=0, faithful=True, resumes=3, limit=3
    )


def test_continuation_carries_the_produced_text() -> None:
    body = {"model": "m", "prompt": "p"}
    assert continuation(body, "abc") == {**body, CONTINUE_FIELD: "abc"}
    assert CONTINUE_FIELD not in body


def test_resumed_chunks_look_like_the_first_attempts() -> None:
    relay = Relay(chat=True)
    first = relay.relay(chat_chunk("a", {"role": "assistant", "content": ""}, created=7))
    assert first is not None and first["id"] == "a"
    relay.relay(chat_chunk("a", {"content": "Hello"}))
    relay.resumes = 1
    assert relay.relay(chat_chunk("b", {"role": "assistant", "content": ""}, created=9)) is None
    later = relay.relay(chat_chunk("b", {"content": " world"}, created=9))
    assert later is not None and (later["id"], later["created"]) == ("a", 7)
    usage = relay.relay({"id": "b", "created": 9, "choices": [], "usage": {"total_tokens": 3}})
    assert usage is not None and usage["id"] == "a" and usage["usage"]["total_tokens"] == 3
    assert relay.text == "Hello world" and relay.chunks == 4


def test_completion_text_is_tracked() -> None:
    relay = Relay(chat=False)
    for piece in ("once", " upon"):
        relay.relay({"id": "c", "choices": [{"index": 0, "text": piece}]})
    assert relay.text == "once upon"
