"""The Responses API in terms of chat completions: items, bodies, objects and events."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from sllm.edge.errors import RequestError
from sllm.edge.responses_api import (
    ResponsesRequest,
    ResponsesStream,
    chat_body,
    from_chat,
    messages,
    skeleton,
)


def request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})


def test_items_become_chat_messages_calls_and_results() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "t", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sun"},
        {"type": "reasoning", "summary": []},
    ]
    out = messages("be brief", items)
    assert out[0] == {"role": "system", "content": "be brief"}
    assert out[1] == {"role": "user", "content": "weather?"}
    assert [c["id"] for c in out[2]["tool_calls"]] == ["c1", "c2"]  # one assistant turn
    assert out[3] == {"role": "tool", "tool_call_id": "c1", "content": "sun"}
    for bad in ([{"type": "computer_call"}], [{"role": "tool", "content": "x"}], []):
        with pytest.raises(RequestError):
            messages(None, bad)


def test_a_request_becomes_a_chat_body() -> None:
    req = request(
        max_output_tokens=5,
        temperature=0.2,
        stream=True,
        tools=[{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "w"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        top_k=3,
    )
    body = chat_body(req, req.items())
    assert body["max_tokens"] == 5 and body["temperature"] == 0.2 and body["top_k"] == 3
    assert body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    with pytest.raises(RequestError, match="only functions"):
        chat_body(request(tools=[{"type": "web_search"}]), request().items())


COMPLETION = {
    "choices": [
        {
            "message": {
                "role": "assistant",
                "content": "hello",
                "tool_calls": [
                    {"id": "c9", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


def test_a_chat_completion_becomes_a_response_the_sdk_reads() -> None:
    response = Response.model_validate(from_chat(skeleton(request(), "resp_1"), COMPLETION))
    assert response.output_text == "hello" and response.status == "incomplete"
    assert response.output[1].type == "function_call" and response.output[1].call_id == "c9"
    assert response.usage is not None and response.usage.total_tokens == 5


def test_a_chat_stream_becomes_the_sdks_events_in_order() -> None:
    stream = ResponsesStream(skeleton(request(), "resp_1"))
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "he"}}]},
        {"choices": [{"delta": {"content": "llo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": COMPLETION["usage"]},
    ]
    events = [*stream.opening(), *(e for c in chunks for e in stream.chunk(c)), *stream.closing()]
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    parsed = [adapter.validate_python(e) for e in events]
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    assert [e.type for e in parsed] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert parsed[-1].response.output_text == "hello"
    assert parsed[-1].response.status == "completed"
