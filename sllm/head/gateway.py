"""The OpenAI API: validate, enqueue on the model's queue, relay the results."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event

from sllm.config import HeadSettings
from sllm.errors import ModelNotFound, RequestError, SllmError
from sllm.head.results import TaskResults
from sllm.kv.bus import ResultBus
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask
from sllm.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    adapter_model_name,
)

log = logging.getLogger(__name__)

router = APIRouter()


@dataclass
class Pending:
    task: NewTask
    results: TaskResults
    request_id: str


class Gateway:
    def __init__(self, store: Store, bus: ResultBus, settings: HeadSettings) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self._background: set[asyncio.Task[None]] = set()

    async def submit(
        self, endpoint: str, model: str, body: dict[str, Any], request_id: str
    ) -> Pending:
        """Queue ``body`` for ``model`` (the deployed model: a LoRA adapter's base)."""
        now = time.time()
        task = NewTask(
            id=uuid.uuid4().hex,
            model=model,
            endpoint=endpoint,
            body=body,
            reply_to=self.bus.channel,
            max_attempts=self.settings.max_attempts,
            created=now,
            deadline=now + self.settings.request_timeout,
            stream=bool(body.get("stream")),
            request_id=request_id,
        )
        queue = self.bus.listen(task.id)
        try:
            enq = await self.store.tasks.enqueue(task, int(self.settings.request_timeout * 2))
        except BaseException:
            self.bus.forget(task.id)
            raise
        if enq.status != "ok":
            self.bus.forget(task.id)
            if enq.status == "missing":
                raise ModelNotFound(f"The model '{task.model}' does not exist", param="model")
            raise ModelNotFound(f"The model '{task.model}' is being deleted", param="model")
        if enq.instances == 0:
            # A cold start must not wait for the autoscaler's next tick.
            await self.store.registry.publish_control({"type": "wake", "model": task.model})
        results = TaskResults(task.id, queue, self.store.tasks, task.deadline)
        return Pending(task, results, request_id)

    async def collect(self, pending: Pending, request: Request) -> dict[str, Any]:
        """The final response of a non-streamed request; the task is cancelled if the
        client goes away first."""
        reading = asyncio.ensure_future(self._final(pending))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({reading, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not reading.done():
                reading.cancel()
                self.cancel(pending)
            self.bus.forget(pending.task.id)
        return reading.result()

    async def _final(self, pending: Pending) -> dict[str, Any]:
        try:
            async for message in pending.results.messages():
                if message.terminal:
                    data: dict[str, Any] = message.data
                    return data
        except SllmError as exc:
            if exc.code == "deadline_exceeded":
                self.cancel(pending)
            raise
        raise AssertionError("a result stream ended without a terminal message")

    async def stream(self, pending: Pending) -> AsyncIterator[bytes]:
        """SSE events of a streamed request, ending in ``[DONE]``."""
        finished = False
        try:
            try:
                async for message in pending.results.messages():
                    if message.kind == "chunk":
                        yield format_sse_event(data_str=json.dumps(message.data))
                finished = True
            except SllmError as exc:
                finished = exc.code != "deadline_exceeded"
                yield format_sse_event(data_str=json.dumps(exc.to_body()))
            yield format_sse_event(data_str="[DONE]")
        finally:
            if not finished:
                self.cancel(pending)
            self.bus.forget(pending.task.id)

    def cancel(self, pending: Pending) -> None:
        """Cancel a task whose client is gone. Runs detached: the caller may itself be
        inside a cancelled scope where nothing more can be awaited."""
        job = asyncio.create_task(self._cancel(pending.task))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _cancel(self, task: NewTask) -> None:
        try:
            state = await self.store.tasks.cancel(
                task.id, task.model, time.time(), int(self.settings.result_ttl)
            )
            if state == "running":
                await self.store.registry.publish_control({"type": "cancel", "task": task.id})
        except Exception as exc:  # the deadline and TTLs still bound the task
            log.warning("could not cancel task %s: %s", task.id, exc)

    async def _check_adapter(self, model: str, adapter: str) -> None:
        record = await self.store.registry.get_model(model)
        if record is None:
            return  # the enqueue answers 404 for the model itself
        adapters = record.config.get("lora_adapters") or {}
        if adapter not in adapters:
            known = ", ".join(sorted(adapters)) or "none"
            raise ModelNotFound(
                f"The model '{model}' has no LoRA adapter '{adapter}' (it has: {known})",
                param="model",
            )

    async def handle(
        self,
        endpoint: str,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        request: Request,
    ) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        headers = {"x-request-id": request_id}
        model, adapter = req.target()
        if adapter is not None:
            await self._check_adapter(model, adapter)
        pending = await self.submit(endpoint, model, _body(req), request_id)
        if not pending.task.stream:
            return JSONResponse(await self.collect(pending, request), headers=headers)
        return EventSourceResponse(
            self.stream(pending),
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _body(req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> dict[str, Any]:
    # Fields the client did not send stay unsent, so backends apply their own defaults.
    return req.model_dump(exclude_unset=True, mode="json")


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
    return await _gateway(request).handle("/v1/chat/completions", req, request)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request) -> Response:
    return await _gateway(request).handle("/v1/completions", req, request)


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
    if req.model_extra and req.model_extra.get("stream"):
        raise RequestError("embeddings cannot be streamed", param="stream")
    return await _gateway(request).handle("/v1/embeddings", req, request)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    models = await _gateway(request).store.registry.list_models()
    cards = []
    for m in models:
        if m.state != "active":
            continue
        cards.append(ModelCard(id=m.name, created=int(m.created)))
        cards.extend(
            ModelCard(id=adapter_model_name(m.name, a), created=int(m.created))
            for a in sorted(m.config.get("lora_adapters") or {})
        )
    return ModelList(data=cards)
