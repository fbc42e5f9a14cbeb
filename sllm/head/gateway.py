"""The OpenAI API: validate, enqueue on the model's queue, relay the results."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.sse import format_sse_event

from sllm.config import HeadSettings
from sllm.edge import fast_json, response_docs
from sllm.edge.errors import (
    ModelNotFound,
    RequestError,
    ServiceUnavailable,
    SllmError,
    TooManyRequests,
)
from sllm.edge.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    adapter_model_name,
)
from sllm.edge.serving import ClientGone, unless_gone
from sllm.head import answer_moves
from sllm.head.cancels import Cancels
from sllm.head.dispatcher import Dispatcher
from sllm.head.read_ahead import ReadAhead
from sllm.head.recent import Recent
from sllm.head.request_headers import request_timeout
from sllm.head.response_cache import HEADER as CACHE_HEADER
from sllm.head.response_cache import CacheEntry, ResponseCache, replayed
from sllm.head.results import MessageLost, Pending, TaskLost, TaskResults
from sllm.head.stalled_clients import StallGuardedStream
from sllm.head.stream_moves import StreamMoves
from sllm.head.stream_resume import Relay, continuation, goes_on, resumable
from sllm.head.watch import Watch
from sllm.kv import RedisError
from sllm.kv.bus import ResultBus
from sllm.kv.store import Store
from sllm.kv.tasks import NewTask
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
# SSE events a stream's relay may produce ahead of its client's writes, written together
# once the client takes them: a bounded lead, so a client that reads nothing still
# stops its stream (flow control).
STREAM_AHEAD = 64
# A full queue drains at the speed of generation: a second is a fair first wait.
QUEUE_FULL_RETRY_AFTER = 1

router = APIRouter()


class NotPlaced(ServiceUnavailable):
    """A task for one instance that this head cannot run there now."""

    code = "not_placed"


class Gateway:
    def __init__(
        self,
        store: Store,
        bus: ResultBus,
        settings: HeadSettings,
        metrics: HeadMetrics,
        recent: Recent,
        dispatcher: Dispatcher,
    ) -> None:
        self.store = store
        self.bus = bus
        # A request that finds its queue empty goes straight to this head's dispatcher.
        self.dispatcher = dispatcher
        self.settings = settings
        self.metrics = metrics
        self.recent = recent
        self.cancels = Cancels(store, settings.result_ttl)
        self.cache = ResponseCache(store, metrics)
        self.moves = StreamMoves(self)

    async def submit(
        self,
        endpoint: str,
        model: str,
        body: dict[str, Any],
        request_id: str,
        deadline: float,
        watch: Watch,
        to: str | None = None,
        pinned: bool = False,
    ) -> Pending:
        """Queue ``body`` for ``model`` (the deployed model: a LoRA adapter's base);
        ``to``: on that instance where this head can place it there now, else queued
        as any task; ``pinned``: on that instance or not at all (NotPlaced)."""
        now = time.time()
        task = NewTask(
            id=uuid.uuid4().hex,
            model=model,
            endpoint=endpoint,
            body=body,
            reply_to=self.bus.channel,
            max_attempts=self.settings.max_attempts,
            created=now,
            deadline=deadline,
            stream=bool(body.get("stream")),
            request_id=request_id,
        )
        offer = self.dispatcher.offer(model, to)
        if pinned and offer is None:
            raise NotPlaced(f"instance {to} cannot take a task of {model} now")
        queue = self.bus.listen(task.id)
        try:
            # Kept a while past the deadline, for the outcome to be read.
            enq = await self.store.tasks.enqueue(task, int(deadline - now) * 2 + 60, offer)
        except BaseException:
            self.bus.forget(task.id)
            raise
        if enq.claim is not None and offer is not None:
            self.dispatcher.adopt(enq.claim, model, offer.instance_id)
        if enq.status != "ok":
            self.bus.forget(task.id)
            if enq.status == "missing":
                raise ModelNotFound(f"The model '{task.model}' does not exist", param="model")
            if enq.status == "unschedulable":
                raise ServiceUnavailable(
                    f"no worker can serve model '{task.model}' now: {enq.reason}",
                    code="model_unschedulable",
                )
            if enq.status == "full":
                raise TooManyRequests(
                    f"the queue of model '{task.model}' is full ({enq.queue_length} waiting)",
                    retry_after=QUEUE_FULL_RETRY_AFTER,
                    code="queue_full",
                )
            raise ModelNotFound(f"The model '{task.model}' is being deleted", param="model")
        if enq.instances == 0:
            # A cold start must not wait for the autoscaler's next tick.
            await self.store.registry.publish_control({"type": "wake", "model": task.model})
        results = TaskResults(task.id, queue, self.store.tasks, task.deadline)
        pending = Pending(task, results, request_id, watch)
        if pinned and enq.claim is None:  # queued behind others: it could run anywhere
            self.cancel(pending)
            self.bus.forget(task.id)
            raise NotPlaced(f"instance {to} cannot take a task of {model} now")
        return pending

    async def collect(self, pending: Pending, request: Request) -> dict[str, Any]:
        """The final response of a non-streamed request; the task is cancelled if the
        client goes away first (ClientGone)."""
        try:
            return await unless_gone(request, self.final(pending))
        except (ClientGone, asyncio.CancelledError):
            self.cancel(pending)
            raise
        finally:
            self.bus.forget(pending.task.id)

    async def final(self, pending: Pending) -> dict[str, Any]:
        try:
            async for message in pending.results.messages():
                if message.terminal:
                    data: dict[str, Any] = message.data
                    pending.watch.instance = str(data.get("system_fingerprint") or "")
                    pending.watch.usage(data)
                    return data
        except SllmError as exc:
            if exc.code == "deadline_exceeded":
                self.cancel(pending)
            raise
        raise AssertionError("a result stream ended without a terminal message")

    async def stream(
        self, pending: Pending, entry: CacheEntry | None = None
    ) -> AsyncGenerator[bytes | SllmError, None]:
        """SSE events of a streamed request, an error being the error itself, ending in
        ``[DONE]``; a whole stream's chunks go into the model's response cache at
        ``entry``."""
        chunks: list[dict[str, Any]] | None = [] if entry is not None else None
        # Closed with this one (a client gone): the task is cancelled at once.
        async with aclosing(self.events(pending)) as events:
            async for event in events:
                if isinstance(event, SllmError):
                    chunks = None
                    yield event
                    continue
                if chunks is not None:
                    chunks.extend(event)
                # The chunks that came together leave together: one event, one write.
                yield b"".join(map(fast_json.sse, event))
        if entry is not None and chunks is not None:
            await self.cache.put(entry, json.dumps(chunks))
        yield format_sse_event(data_str="[DONE]")

    async def events(
        self, pending: Pending
    ) -> AsyncGenerator[list[dict[str, Any]] | SllmError, None]:
        """The chunks of a streamed request, those that came together as one list (one
        step for the batch, not one per chunk), an error being the error itself (and
        the last). When the instance dies after output began, the request goes on from
        what was relayed on another instance (up to ``max_attempts`` resumes) and the
        client sees one stream."""
        task = pending.task
        relay = Relay(chat=task.endpoint == "/v1/chat/completions")
        can_resume = resumable(task.endpoint, task.body)
        itl = self.metrics.itl.labels(task.model)
        finished = False
        # Until the stream ends one way or the other: the client went away.
        outcome = "client_gone"
        self.moves.open(task.id)
        try:
            while True:
                moved = None
                try:
                    async for message in pending.results.messages():
                        relayed = [c for c in map(relay.relay, message.chunks) if c is not None]
                        if not relayed:
                            continue
                        for chunk in relayed:
                            pending.watch.chunk(chunk, itl)
                        yield relayed
                        moved = await self.moves.step(pending, relay, can_resume)
                        if moved is not None:
                            break  # the stream goes on as the moved task
                    if moved is not None:
                        pending = moved
                        continue
                    finished = True
                    outcome = "ok"
                except SllmError as exc:
                    if goes_on(
                        exc.code,
                        lost=isinstance(exc, MessageLost),
                        relayed=relay.chunks,
                        faithful=can_resume,
                        resumes=relay.resumes,
                        limit=self.settings.max_attempts,
                    ):
                        resumed = await self._resume(pending, relay)
                        if resumed is not None:
                            pending = resumed
                            self.moves.open(pending.task.id)
                            continue
                    finished = exc.code != "deadline_exceeded"
                    outcome = exc.code
                    yield exc
                break
        finally:
            if not finished:
                self.cancel(pending)
            self.moves.close(pending.task.id, task.model)
            self.bus.forget(pending.task.id)
            self._done(pending, "slow_client" if pending.watch.stalled else outcome)

    async def _resume(self, pending: Pending, relay: Relay) -> Pending | None:
        """A new task that goes on from ``relay``'s text (the request itself when nothing
        was relayed); None when it cannot be queued."""
        task = pending.task
        self.cancel(pending)  # a restarted attempt of the old task must not run on
        self.bus.forget(task.id)
        self.moves.close(task.id, task.model, "source_failed")
        relay.resumes += 1
        log.info(
            "task %s broke after %d chunk(s): resuming (%d)",
            task.id,
            relay.chunks,
            relay.resumes,
        )
        self.metrics.resumes.labels(task.model).inc()
        self.metrics.stale_dropped.inc(pending.results.stale_dropped)
        try:
            return await self.submit(
                task.endpoint,
                task.model,
                continuation(task.body, relay.text) if relay.chunks else task.body,
                pending.request_id,
                task.deadline,
                pending.watch,
            )
        except (SllmError, RedisError) as exc:
            log.warning("could not resume task %s: %s", task.id, exc)
            return None

    def cancel(self, pending: Pending) -> None:
        """Cancel a task whose client is gone (detached: the caller may itself be inside
        a cancelled scope)."""
        self.cancels.cancel(pending.task)

    async def close(self) -> None:
        await self.cancels.close()

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

    async def start(
        self, endpoint: str, model: str, body: dict[str, Any], request: Request
    ) -> Pending:
        """Queue a request's task (its id from ``x-request-id``, its deadline from
        ``X-Request-Timeout``); a refusal is counted and raised."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        deadline = time.time() + request_timeout(request, self.settings)
        watch = Watch(request_id, model, endpoint)
        try:
            return await self.submit(endpoint, model, body, request_id, deadline, watch)
        except SllmError as exc:
            # Refused before queueing; names that match no model share one label, so
            # random names cannot grow the series without bound.
            known = "" if isinstance(exc, ModelNotFound) else model
            self.metrics.requests.labels(known, endpoint, exc.code).inc()
            raise

    async def answer(self, pending: Pending, request: Request) -> dict[str, Any]:
        """A non-streamed request's response (ClientGone when its client left first); a
        task Redis lost is queued again, up to ``max_attempts`` times; one cut short to
        move goes on at its destination (``answer_moves``)."""
        outcome = "client_gone"
        relay = Relay(chat=False)  # nothing is relayed: it only counts the new tasks
        first, whole = pending.task, None
        try:
            while True:
                try:
                    got = await self.collect(pending, request)
                except TaskLost:
                    again = None
                    if relay.resumes < self.settings.max_attempts:
                        again = await self._resume(pending, relay)
                    if again is None:
                        raise
                    pending = again
                    continue
                whole = got if whole is None else answer_moves.joined(whole, got)
                moved = answer_moves.moved_of(got)
                if moved is None:
                    break
                # Cut short to move (live migration): it goes on at the destination.
                pending = await answer_moves.go_on(self, first, pending, whole, moved)
            outcome = "ok"
            return whole
        except SllmError as exc:
            outcome = exc.code
            raise
        finally:
            self._done(pending, outcome)

    async def handle(
        self,
        endpoint: str,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        request: Request,
    ) -> Response:
        model, adapter = req.target()
        if adapter is not None:
            await self._check_adapter(model, adapter)
        body = _body(req)
        if adapter is not None:
            # One spelling for every backend: vLLM knows adapters by the model name only.
            body["model"] = adapter_model_name(model, adapter)
            body.pop("lora_adapter_name", None)
        entry = await self.cache.entry(model, endpoint, body)
        cached = await self.cache.lookup(entry) if entry is not None else None
        if cached is not None:
            self.metrics.requests.labels(model, endpoint, "ok").inc()
            return replayed(cached, bool(body.get("stream")), request)
        pending = await self.start(endpoint, model, body, request)
        headers = {"x-request-id": pending.request_id}
        if entry is not None:
            headers[CACHE_HEADER] = "miss"
        try:
            if pending.task.stream:
                stream = self.stream(pending, entry)
                return await self.open_stream(pending, request, headers, stream)
            answer = await self.answer(pending, request)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        raw = fast_json.dumps(answer)
        if entry is not None:
            await self.cache.put(entry, raw.decode())
        return Response(raw, headers=headers, media_type="application/json")

    async def open_stream(
        self,
        pending: Pending,
        request: Request,
        headers: dict[str, str],
        stream: AsyncGenerator[bytes | SllmError, None],
    ) -> Response:
        """A streamed request's response, its body ``stream`` (the task's SSE events,
        or what they are made into). Its status waits for the first event, for at most
        one keep-alive interval: a request refused before any output (a backend's 400)
        gets the error's own status, as when not streamed, not a 200 with one error event."""
        events = ReadAhead(stream, STREAM_AHEAD)
        first: bytes | SllmError | None
        try:
            first = await unless_gone(request, events.next(self.settings.stream_keepalive))
        except TimeoutError:
            first = None  # a cold start, a long prompt: the stream begins with keep-alives
        except BaseException:
            await events.aclose()  # ends the task: the client is gone
            raise
        if isinstance(first, SllmError):
            await events.aclose()
            raise first
        return StallGuardedStream(
            self._sse(events, first),
            pending.watch,
            self.settings.stream_stall_timeout,
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(
        self, events: ReadAhead[bytes | SllmError], first: bytes | SllmError | None
    ) -> AsyncIterator[bytes]:
        """The stream's body from ``first`` (None: nothing yet) on, with an SSE comment
        after every keep-alive interval of silence (a cold start, a long prompt), so
        proxies and clients do not time the stream out."""
        event = first
        try:
            while True:
                if event is None:
                    yield KEEPALIVE
                elif isinstance(event, SllmError):
                    yield format_sse_event(data_str=json.dumps(event.to_body()))
                else:
                    # With the events that came meanwhile: one write, not one each.
                    more = cast("list[bytes]", events.ready(lambda e: isinstance(e, bytes)))
                    yield b"".join([event, *more]) if more else event
                try:
                    event = await events.next(self.settings.stream_keepalive)
                except TimeoutError:
                    event = None
                except StopAsyncIteration:
                    return
        finally:
            await events.aclose()

    def _done(self, pending: Pending, outcome: str) -> None:
        """A request ended: its metrics, this head's recent traffic and its log line."""
        self.metrics.stale_dropped.inc(pending.results.stale_dropped)
        pending.watch.ended(
            self.metrics, self.recent, pending.task.id, pending.results.attempt, outcome
        )


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _body(req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> dict[str, Any]:
    # Fields the client did not send stay unsent, so backends apply their own defaults.
    return req.model_dump(exclude_unset=True, mode="json")


# Served on the lean path (sllm.edge.lean_routes): the requests a cluster serves most.
HOT_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@router.post("/v1/chat/completions", responses=response_docs.CHAT_COMPLETIONS)
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
    return await _gateway(request).handle("/v1/chat/completions", req, request)


@router.post("/v1/completions", responses=response_docs.COMPLETIONS)
async def completions(req: CompletionRequest, request: Request) -> Response:
    return await _gateway(request).handle("/v1/completions", req, request)


@router.post("/v1/embeddings", responses=response_docs.EMBEDDINGS)
async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
    if req.model_extra and req.model_extra.get("stream"):
        raise RequestError("embeddings cannot be streamed", param="stream")
    return await _gateway(request).handle("/v1/embeddings", req, request)
