"""OpenAI's Responses API in terms of chat completions, for backends that serve only
those (transformers, dummy). Pure: the request's input items become chat messages, a
chat completion becomes a Response object, and a chat stream's chunks become the
Responses API's events (``ResponsesStream``). vLLM models get vLLM's own implementation.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sllm.edge.errors import RequestError
from sllm.edge.protocol import _Request

# Sampling fields a Responses request may carry that mean the same in a chat request.
_SAMPLING = (
    "temperature",
    "top_p",
    "seed",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "user",
)


class ResponsesRequest(_Request):
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    previous_response_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$"
    )
    store: bool = True
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True

    def items(self) -> list[dict[str, Any]]:
        """The input as items (a text is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return list(self.input)


class ResponseObject(BaseModel):
    """A Response as sent, declared for clients and schema checkers (built as a dict)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created_at: float
    status: str
    model: str
    output: list[dict[str, Any]]


class ResponseEvent(BaseModel):
    """One event of a streamed Response (its other fields depend on its type)."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int = Field(ge=0)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")
        )
    raise RequestError("a message's content must be a text or a list of parts", param="input")


def messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for input items: messages, function calls (an assistant's
    ``tool_calls``) and their outputs (``tool`` messages)."""
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise RequestError(f"an input message's role cannot be {role!r}", param="input")
            out.append({"role": role, "content": _text(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or new_id("call"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else _text(output),
                }
            )
        elif kind != "reasoning":  # a model's reasoning is not read back
            raise RequestError(
                f"input items of type {kind!r} are not supported by this model's backend",
                param="input",
            )
    if not out:
        raise RequestError("the input has no message", param="input")
    return out


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    chat = []
    for tool in tools:
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise RequestError(
                f"tools of type {tool.get('type')!r} are not supported by this model's "
                "backend: only functions",
                param="tools",
            )
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        chat.append({"type": "function", "function": function})
    return chat


def _tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    return {"type": fmt.get("type")}


def chat_body(req: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completion request that answers ``req`` over the conversation ``items``
    (the previous response's, then this request's)."""
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages(req.instructions, items),
        "stream": req.stream,
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    given = req.model_dump(exclude_unset=True)
    body.update({k: given[k] for k in _SAMPLING if given.get(k) is not None})
    optional = {
        "tools": _tools(req.tools),
        "tool_choice": _tool_choice(req.tool_choice),
        "response_format": _response_format(req.text),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def skeleton(req: ResponsesRequest, response_id: str) -> dict[str, Any]:
    """A Response object before any output: what it echoes of the request."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": req.model,
        "output": [],
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": req.tools or [],
        "tool_choice": req.tool_choice or "auto",
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "store": req.store,
        "text": req.text or {"format": {"type": "text"}},
        "metadata": req.metadata or {},
        "truncation": "disabled",
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [part] if status == "completed" else [],
    }


def _call_item(call: dict[str, Any], status: str) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": new_id("fc"),
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name"),
        "arguments": function.get("arguments", "") if status == "completed" else "",
        "status": status,
    }


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    return {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", 0),
    }


def _finished(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    if finish_reason == "length":
        return {
            **response,
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
        }
    return {**response, "status": "completed"}


def from_chat(response: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """The Response for a chat completion (its first choice), from its ``skeleton``."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    if message.get("content"):
        output.append(_message_item(new_id("msg"), message["content"], "completed"))
    output.extend(_call_item(call, "completed") for call in message.get("tool_calls") or [])
    done = {**response, "output": output, "usage": _usage(completion.get("usage"))}
    return _finished(done, choice.get("finish_reason"))


class ResponsesStream:
    """A chat stream's chunks as the Responses API's events, in its order: created,
    in_progress, then per output item added / deltas / done, then completed. Text
    streams as it comes; a function call comes whole."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.sequence = 0
        self.message_id: str | None = None
        self.text: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.message_id is None:
                    events += self._open_message()
                self.text.append(delta["content"])
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=self.message_id,
                        output_index=0,
                        content_index=0,
                        delta=delta["content"],
                        logprobs=[],
                    )
                )
            self.calls.extend(delta.get("tool_calls") or [])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        self.message_id = new_id("msg")
        return [
            self._event(
                "response.output_item.added",
                output_index=0,
                item=_message_item(self.message_id, "", "in_progress"),
            ),
            self._event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def closing(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        output: list[dict[str, Any]] = []
        if self.message_id is not None:
            text = "".join(self.text)
            item = _message_item(self.message_id, text, "completed")
            part = item["content"][0]
            ids = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
            events += [
                self._event("response.output_text.done", text=text, logprobs=[], **ids),
                self._event("response.content_part.done", part=part, **ids),
                self._event("response.output_item.done", output_index=0, item=item),
            ]
            output.append(item)
        for call in self.calls:
            index = len(output)
            done = _call_item(call, "completed")
            events += [
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item={**done, "arguments": "", "status": "in_progress"},
                ),
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=done["id"],
                    output_index=index,
                    delta=done["arguments"],
                ),
                self._event(
                    "response.function_call_arguments.done",
                    item_id=done["id"],
                    output_index=index,
                    arguments=done["arguments"],
                ),
                self._event("response.output_item.done", output_index=index, item=done),
            ]
            output.append(done)
        final = {**self.response, "output": output, "usage": _usage(self.usage)}
        self.response = _finished(final, self.finish_reason)
        # As vLLM does: "completed" ends every stream, its response's status saying
        # whether it is complete (the SDK's stream helper waits for no other event).
        return [*events, self._event("response.completed", response=self.response)]
