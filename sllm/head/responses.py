"""The Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

A vLLM model answers with vLLM's own implementation (the task goes to its
``/v1/responses``); the others through sllm's chat path (``sllm.edge.responses_api``).
Either way sllm keeps the conversation: a ``previous_response_id`` is expanded here into
the input items it answered and its output, so any instance (or a new one, after scale
to zero) can go on from it, and stored responses live in Redis (``ResponseStore``: a
TTL, a size bound per response, a bound on their number), shared by every head.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import format_sse_event

from sllm.edge import response_docs
from sllm.edge.errors import ModelNotFound, NotFound, SllmError
from sllm.edge.protocol import adapter_model_name
from sllm.edge.responses_api import (
    ResponseObject,
    ResponsesRequest,
    ResponsesStream,
    chat_body,
    from_chat,
    new_id,
    skeleton,
)
from sllm.edge.serving import ClientGone
from sllm.head.gateway import Gateway
from sllm.head.results import Pending

log = logging.getLogger(__name__)

router = APIRouter()

_NATIVE = "/v1/responses"  # vLLM's own route
_CHAT = "/v1/chat/completions"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _conversation(gateway: Gateway, req: ResponsesRequest) -> list[dict[str, Any]]:
    """The items this request answers: the previous response's input and output, then
    its own input (the previous instructions are not carried over, as OpenAI has it)."""
    if req.previous_response_id is None:
        return req.items()
    stored = await gateway.store.responses.load(req.previous_response_id)
    if stored is None:
        raise NotFound(
            f"no stored response '{req.previous_response_id}' (never stored, or expired)",
            param="previous_response_id",
        )
    return [*stored["input"], *stored["response"].get("output", []), *req.items()]


async def _store(
    gateway: Gateway, req: ResponsesRequest, response: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    if not req.store:
        return
    settings = gateway.settings
    stored = await gateway.store.responses.save(
        response["id"],
        {"response": response, "input": items},
        int(settings.responses_ttl),
        settings.responses_max_bytes,
        settings.responses_max_count,
    )
    if not stored:
        log.warning("response %s is over the store's size bound: not stored", response["id"])


@router.post("/v1/responses", responses=response_docs.RESPONSES)
async def create_response(req: ResponsesRequest, request: Request) -> Response:
    gateway = _gateway(request)
    model, adapter = req.target()
    record = await gateway.store.registry.get_model(model)
    if record is None or record.state != "active":
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    items = await _conversation(gateway, req)
    name = adapter_model_name(model, adapter) if adapter else model
    native = record.config.get("backend") == "vllm"
    if native:
        body = {**req.model_dump(exclude_unset=True, mode="json"), "model": name, "input": items}
        # sllm keeps the conversation: vLLM's own store is one instance's memory.
        body.pop("previous_response_id", None)
        body["store"] = False
        pending = await gateway.start(_NATIVE, model, body, request)
    else:
        body = {**chat_body(req, items), "model": name}
        pending = await gateway.start(_CHAT, model, body, request)
    headers = {"x-request-id": pending.request_id}
    try:
        if req.stream:
            events = _native_events if native else _chat_events
            stream = events(gateway, pending, req, items)
            return await gateway.open_stream(pending, request, headers, stream)
        answer = await gateway.answer(pending, request)
    except ClientGone:
        return Response(status_code=499)
    if native:
        response = {**answer, "previous_response_id": req.previous_response_id, "store": req.store}
    else:
        response = from_chat(skeleton(req, new_id("resp")), answer)
    await _store(gateway, req, response, items)
    return JSONResponse(response, headers=headers)


def _sse(event: dict[str, Any]) -> bytes:
    return format_sse_event(event=str(event.get("type")), data_str=json.dumps(event))


async def _chat_events(
    gateway: Gateway, pending: Pending, req: ResponsesRequest, items: list[dict[str, Any]]
) -> AsyncGenerator[bytes | SllmError, None]:
    """A chat stream as the Responses API's events; the response is stored at its end."""
    stream = ResponsesStream(skeleton(req, new_id("resp")))
    async with aclosing(gateway.events(pending)) as batches:
        first = True
        async for batch in batches:
            if isinstance(batch, SllmError):
                yield batch
                return
            if first:
                for event in stream.opening():
                    yield _sse(event)
                first = False
            for chunk in batch:
                for event in stream.chunk(chunk):
                    yield _sse(event)
    for event in stream.closing():
        yield _sse(event)
    await _store(gateway, req, stream.response, items)


async def _native_events(
    gateway: Gateway, pending: Pending, req: ResponsesRequest, items: list[dict[str, Any]]
) -> AsyncGenerator[bytes | SllmError, None]:
    """vLLM's events as they come; the response its last event carries is stored."""
    final: dict[str, Any] | None = None
    async with aclosing(gateway.events(pending)) as batches:
        async for batch in batches:
            if isinstance(batch, SllmError):
                yield batch
                return
            for event in batch:
                if event.get("type") in (
                    "response.completed",
                    "response.incomplete",
                    "response.failed",
                ):
                    final = {**event["response"], "previous_response_id": req.previous_response_id}
                    event = {**event, "response": final}
                yield _sse(event)
    if final is not None:
        await _store(gateway, req, final, items)


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    responses={404: {"description": "Not stored."}},
)
async def retrieve_response(response_id: str, request: Request) -> dict[str, Any]:
    stored = await _gateway(request).store.responses.load(response_id)
    if stored is None:
        raise NotFound(f"no stored response '{response_id}'", param="response_id")
    response: dict[str, Any] = stored["response"]
    return response


@router.delete("/v1/responses/{response_id}", responses={404: {"description": "Not stored."}})
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    if not await _gateway(request).store.responses.delete(response_id):
        raise NotFound(f"no stored response '{response_id}'", param="response_id")
    return {"id": response_id, "object": "response.deleted", "deleted": True}
