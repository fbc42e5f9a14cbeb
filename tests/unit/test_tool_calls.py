"""Tool calling on sllm's own backends: plans, forced-call schemas, parsing."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from sllm.backends import tool_calls
from sllm.backends.dummy_json import instance
from sllm.edge.errors import RequestError

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "time"}}


def test_plans_follow_tool_choice_and_refuse_what_cannot_be() -> None:
    assert tool_calls.plan(None, None) is None
    assert tool_calls.plan([WEATHER], "none") is None
    assert tool_calls.plan([WEATHER], None) == tool_calls.ToolPlan([WEATHER], "auto")
    assert tool_calls.plan([WEATHER], "required").mode == "required"  # type: ignore[union-attr]
    named = tool_calls.plan([WEATHER, TIME], {"type": "function", "function": {"name": "time"}})
    assert named == tool_calls.ToolPlan([WEATHER, TIME], "named", "time")
    bad: list[tuple[Any, Any, str]] = [
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([WEATHER], {"type": "function", "function": "weather"}, "tool_choice"),
        ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], "auto", "tools"),
        ([{"type": "function"}], "auto", "tools"),
        ("weather", "auto", "tools"),
        (None, "required", "tool_choice"),
    ]
    for tools, choice, param in bad:
        with pytest.raises(RequestError) as refused:
            tool_calls.plan(tools, choice)
        assert refused.value.param == param, (tools, choice)


def test_forced_calls_have_a_schema_that_only_listed_calls_meet() -> None:
    plan = tool_calls.plan([WEATHER, TIME], "required")
    assert plan is not None
    schema = tool_calls.call_schema(plan)
    assert schema is not None
    jsonschema.validate({"name": "weather", "arguments": {"city": "Oslo"}}, schema)
    jsonschema.validate({"name": "time", "arguments": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "weather", "arguments": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "other", "arguments": {}}, schema)
    auto = tool_calls.plan([WEATHER], "auto")
    assert auto is not None and tool_calls.call_schema(auto) is None
    # The dummy fills a forced call's schema with a valid call.
    forced = tool_calls.call_schema(auto, forced=True)
    assert forced is not None
    made = instance(forced, "seed")
    assert tool_calls.parse(json.dumps(made))[1][0].name == "weather"


def test_calls_are_parsed_tagged_or_bare_and_the_rest_is_content() -> None:
    text = 'Let me check. <tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    content, calls = tool_calls.parse(text)
    assert content == "Let me check."
    assert calls == [tool_calls.ToolCall("weather", '{"city": "Oslo"}')]
    assert tool_calls.parse('{"name": "time", "parameters": {}}')[1] == [
        tool_calls.ToolCall("time", "{}")
    ]
    assert tool_calls.parse("It is sunny.") == ("It is sunny.", [])
    assert tool_calls.parse('{"city": "Oslo"}') == ('{"city": "Oslo"}', [])
    unclosed = tool_calls.parse('<tool_call>{"name": "time", "arguments": {}}')
    assert unclosed[1] == [tool_calls.ToolCall("time", "{}")]


def test_templates_without_tools_are_told_of_them_and_of_past_calls() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "time", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "noon", "tool_call_id": "c1"},
    ]
    turns = tool_calls.without_tool_support(messages, [TIME])
    assert turns[0]["role"] == "system" and '"name": "time"' in turns[0]["content"]
    assert turns[2] == {
        "role": "assistant",
        "content": '<tool_call>{"name": "time", "arguments": {}}</tool_call>',
    }
    assert turns[3] == {"role": "user", "content": "Function result: noon"}
    templated = tool_calls.template_messages(messages)
    assert templated[1]["tool_calls"][0]["function"]["arguments"] == {}
