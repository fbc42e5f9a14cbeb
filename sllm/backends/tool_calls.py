"""Tool calling on sllm's own backends: a request's ``tools`` and ``tool_choice`` as a
plan, the JSON schema that holds a forced call's output, and the calls parsed out of
what a model wrote. Pure.

A model calls a tool by writing ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(the Hermes format, which Qwen, SmolLM3 and many chat templates teach) or, as Llama 3
does, by answering with the bare object. With ``tool_choice`` ``required`` or a named
function, the grammar engine holds the output to the bare object of a listed tool, so
the answer is a call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sllm.edge.errors import RequestError
from sllm.edge.protocol import ChatMessage

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)


@dataclass(frozen=True)
class ToolPlan:
    # The tools as the request gave them (OpenAI's {"type": "function", "function": ...}).
    tools: list[dict[str, Any]]
    mode: Literal["auto", "required", "named"]
    name: str | None = None

    def functions(self) -> list[dict[str, Any]]:
        return [t["function"] for t in self.tools]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def plan(tools: Any, tool_choice: Any) -> ToolPlan | None:
    """The plan for a request's tools; None when it uses none. A bad shape or a named
    tool that is not among them is a 400 naming the field."""
    if tools in (None, []) or tool_choice == "none":
        if tool_choice not in (None, "none", "auto"):
            raise RequestError(
                f"tool_choice {json.dumps(tool_choice)} needs tools, and the request has none",
                param="tool_choice",
            )
        return None
    if not isinstance(tools, list) or not all(_is_function(t) for t in tools):
        raise RequestError(
            'tools must be a list of {"type": "function", "function": {"name": ..., '
            '"parameters": {...}}}',
            param="tools",
        )
    names = [t["function"]["name"] for t in tools]
    if tool_choice in (None, "auto"):
        return ToolPlan(tools, "auto")
    if tool_choice == "required":
        return ToolPlan(tools, "required")
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    named = function.get("name") if isinstance(function, dict) else None
    if not isinstance(named, str):
        raise RequestError(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if named not in names:
        raise RequestError(
            f"tool_choice names '{named}', which is not among the tools ({', '.join(names)})",
            param="tool_choice",
        )
    return ToolPlan(tools, "named", named)


def _is_function(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return (
        isinstance(function, dict)
        and tool.get("type", "function") == "function"
        and isinstance(function.get("name"), str)
        and bool(function["name"])
        and isinstance(function.get("parameters") or {}, dict)
    )


def call_schema(tool_plan: ToolPlan, forced: bool = False) -> dict[str, Any] | None:
    """The JSON schema of a call the plan forces (``required``, a named tool, or every
    plan when ``forced``); None when the model chooses."""
    if tool_plan.mode == "auto" and not forced:
        return None
    chosen = [
        f for f in tool_plan.functions() if tool_plan.mode != "named" or f["name"] == tool_plan.name
    ]
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": _arguments(f)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    """The schema of a function's arguments in a forced call: its parameters, and no
    others unless it says so (a model may otherwise go on inventing keys)."""
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def parse(text: str) -> tuple[str, list[ToolCall]]:
    """(the text that is not a call, the calls) in what a model wrote."""
    calls = [c for body in _TAGGED.findall(text) for c in _calls_in(body)]
    if calls:
        return _TAGGED.sub("", text).strip(), calls
    bare = _calls_in(text.strip())
    return ("", bare) if bare else (text, [])


def _calls_in(body: str) -> list[ToolCall]:
    try:
        value = json.loads(body)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            text = arguments
        else:
            text = json.dumps(arguments)
        calls.append(ToolCall(item["name"], text))
    return calls


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates read them: an assistant's calls with their arguments
    as objects (OpenAI sends JSON text)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and isinstance(calls, list):
            message = {**message, "tool_calls": [_templated_call(c) for c in calls]}
        out.append(message)
    return out


def _templated_call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def without_tool_support(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """For a chat template that knows no tools: the tools described in a system
    message, past calls written as the model would write them, results as user turns."""
    listed = "\n".join(json.dumps(t["function"]) for t in tools)
    system = (
        "You may call these functions:\n"
        f"{listed}\n"
        f'To call one, answer with {OPEN}{{"name": NAME, "arguments": {{...}}}}{CLOSE} '
        "and nothing else."
    )
    out: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for message in template_messages(messages):
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            written = "".join(
                _written(f)
                for c in message["tool_calls"]
                if isinstance(c, dict) and isinstance(f := c.get("function"), dict)
            )
            out.append({"role": "assistant", "content": (message.get("content") or "") + written})
        elif role == "tool":
            out.append({"role": "user", "content": f"Function result: {message.get('content')}"})
        else:
            out.append(message)
    return out


def _written(function: dict[str, Any]) -> str:
    """A past call as the model is told to write one."""
    call = {"name": function.get("name"), "arguments": function.get("arguments")}
    return f"{OPEN}{json.dumps(call)}{CLOSE}"


def template_turn(message: ChatMessage) -> dict[str, Any]:
    """A chat message as a template reads it: its text, and the fields of tool use."""
    turn: dict[str, Any] = {"role": message.role, "content": message.text()}
    for name in ("tool_calls", "tool_call_id", "name"):
        value = getattr(message, name, None)
        if value is not None:
            turn[name] = value
    return turn


def template_input(
    messages: list[ChatMessage], tools: list[dict[str, Any]] | None, template: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """What a chat template renders for ``messages`` and ``tools``: the messages as it
    reads them, and the tools, or None with the tools told in a system message when the
    template knows none. RequestError when the model has no template."""
    if not template:
        raise RequestError("this model has no chat template: use /v1/completions", param="messages")
    turns = [template_turn(m) for m in messages]
    if tools and "tools" not in template:
        # A template that knows no tools: sllm tells the model of them itself.
        return without_tool_support(turns, tools), None
    return template_messages(turns), tools
