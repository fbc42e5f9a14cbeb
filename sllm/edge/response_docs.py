"""What the OpenAI routes answer, as OpenAPI ``responses=`` declarations.

The routes return ``Response`` objects (JSON or an SSE stream, chosen by ``stream``), so
FastAPI cannot infer what they send; these declarations tell clients and schema checkers
(tests/faults/test_schemas.py). A stream is documented the OpenAPI 3.2 way FastAPI uses
for its own SSE routes: ``itemSchema`` describes one event, whose ``data`` is a JSON
chunk, an OpenAI error object (a failure after the stream began), or ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sllm.edge.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    EmbeddingList,
    ErrorResponse,
)
from sllm.edge.responses_api import ResponseEvent, ResponseObject

Responses = dict[int | str, dict[str, Any]]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions: a schema
    placed under ``content`` as it is would point at definitions no document has."""
    defs: dict[str, Any] = schema.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return expand(defs[ref.removeprefix("#/$defs/")])
            return {key: expand(value) for key, value in node.items()}
        if isinstance(node, list):
            return [expand(value) for value in node]
        return node

    inlined: dict[str, Any] = expand(schema)
    return inlined


def _event(chunk: type[BaseModel]) -> dict[str, Any]:
    payload = {
        "anyOf": [
            _inline(chunk.model_json_schema(mode="serialization")),
            _inline(ErrorResponse.model_json_schema(mode="serialization")),
        ]
    }
    return {
        "type": "object",
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": payload,
                    },
                ]
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }


def generation(complete: type[BaseModel], chunk: type[BaseModel]) -> Responses:
    """A generation route: one JSON object, or with ``stream`` an SSE stream of chunks."""
    return {
        200: {
            "model": complete,
            "description": "The result; with `stream`, server-sent events ending in `[DONE]`.",
            "content": {"text/event-stream": {"itemSchema": _event(chunk)}},
        }
    }


CHAT_COMPLETIONS: Responses = generation(ChatCompletion, ChatCompletionChunk)
COMPLETIONS: Responses = generation(Completion, Completion)
EMBEDDINGS: Responses = {200: {"model": EmbeddingList, "description": "The embeddings."}}
RESPONSES: Responses = generation(ResponseObject, ResponseEvent)
