"""``/invoke``: run one task attempt on a local backend and publish what it produces.

Every backend speaks the same local OpenAI-compatible HTTP, so this one proxy serves
them all. Chunks go to the task's reply channel as they come; the terminal outcome is
stored and published in one step (finish_task.lua). The HTTP answer to the dispatcher
is NDJSON: the outcome line alone when the attempt ends within ``ALIVE_INTERVAL``, else a
stream with a line every ``ALIVE_INTERVAL`` seconds while the attempt runs (so a frozen
worker is told from a slow one), then the outcome. A non-streamed answer whose client
waits on the dispatching head itself is stored but not published: it goes back in the
outcome line (``answer``), which that head reads anyway, and saves Redis a publish and
the head a message; published after all when the dispatcher hung up first. A stream
whose client waits there, when the dispatcher asks, goes back in the answer too: its
chunks as lines as they come, its end in the outcome line (``direct_lines.py``).

A dispatcher that hangs up without having cancelled the task has died (or is stopping):
the attempt then goes on here, the worker renewing its lease, and its output still reaches
its client on whichever head that client is, instead of waiting for the lease to run out
and starting over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sllm.backends.cuts import TASK_HEADER
from sllm.backends.registry import get_backend
from sllm.edge.errors import error_body
from sllm.edge.hop_client import HopClient, HopError
from sllm.edge.messages import (
    DIRECT_HEADER,
    FLOW_WINDOW,
    ResultMessage,
    encode_chunks,
    encode_raw,
)
from sllm.edge.serving import hop_socket, hung_up
from sllm.kv import RedisError
from sllm.kv.store import Store
from sllm.worker import direct_lines
from sllm.worker.continuation import CONTINUE_FIELD, recounted, restated
from sllm.worker.instance_manager import InstanceManager

log = logging.getLogger(__name__)

ALIVE_INTERVAL = 1.0
# Seconds a kept-alive connection to a backend may idle (its server keeps it 75).
BACKEND_IDLE = 60.0
BACKEND_CONNECT = 2.0
NDJSON = "application/x-ndjson"


class Ended(NamedTuple):
    """How an attempt ended; ``answer``: its terminal message, stored but left to the
    dispatcher to deliver."""

    outcome: str
    error: str = ""
    answer: str = ""


class ReaderGone(Exception):
    """No gateway acknowledged a stream's chunks for twice its stall timeout."""


class InvokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str
    attempt: int
    model: str
    instance_id: str
    endpoint: str
    body: str
    stream: bool = False
    reply_to: str
    request_id: str = ""
    deadline: float
    # The dispatching head and its lease length: the worker holds the lease in its stead
    # when that head goes away mid-attempt.
    owner: str = ""
    # The attempt's claim (its stamp time): carried on every message, checked by finish
    # and renew, so that a second claim of the same attempt number is told apart.
    claim: str = Field("", max_length=64)
    lease_seconds: float = Field(15.0, gt=0)
    # How long the gateway waits on a client that reads nothing before it cancels the
    # task; the worker gives up at twice that (the gateway's head is gone, say).
    stall_seconds: float = Field(60.0, gt=0)


class Proxy:
    def __init__(self, store: Store, instances: InstanceManager, result_ttl: float = 300.0) -> None:
        self.store = store
        self.instances = instances
        self.result_ttl = int(result_ttl)
        # A request's own call to its backend; the rarer ones (counting a resumed
        # stream's tokens, cutting an answer short) go through aiohttp.
        self.hop = HopClient(idle_seconds=BACKEND_IDLE, socket_factory=hop_socket)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, keepalive_timeout=BACKEND_IDLE, socket_factory=hop_socket
            )
        )
        self._background: set[asyncio.Task[None]] = set()
        # The backend calls in flight: each ends with its answer's stream, or here.
        self._calls: set[asyncio.Future[Ended]] = set()

    async def aclose(self) -> None:
        for call in self._calls:
            # Left running by an answer that never began streaming, or carried on after
            # its dispatcher left: an unfinished attempt goes back to its lease's expiry.
            call.cancel()
        await asyncio.gather(*self._calls, *self._background, return_exceptions=True)
        await self.http.close()
        await self.hop.close()

    async def invoke(self, call: InvokeBody, request: Request) -> Response:
        port = self.instances.port(call.instance_id)
        if port is None:
            return Response(
                _outcome(Ended("retry", f"instance {call.instance_id} is not on this worker")),
                media_type=NDJSON,
            )
        direct = None
        if call.stream and request.headers.get(DIRECT_HEADER) and self._hands(call):
            direct = direct_lines.DirectLines()
        job = asyncio.ensure_future(self._forward(call, port, direct))
        self._calls.add(job)
        job.add_done_callback(self._calls.discard)
        if direct is not None:  # its chunks go in the answer as they come
            return StreamingResponse(self._run(call, job, direct), media_type=NDJSON)
        # Most attempts end within the first interval: the outcome line is then the whole
        # answer, sent with its length in two writes, where a chunked stream takes three
        # (on a VM each wakes the dispatcher's process) and a task group.
        gone = asyncio.ensure_future(hung_up(request))
        try:
            await asyncio.wait(
                {job, gone}, timeout=ALIVE_INTERVAL, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if job.done():
            return Response(_outcome(job.result()), media_type=NDJSON)
        if gone.done() and not gone.cancelled():
            self._detach(self._carry_on(call, job))  # as when the stream below is cut
            return Response(status_code=499)  # nobody reads it
        return StreamingResponse(self._run(call, job), media_type=NDJSON)

    async def _run(
        self,
        call: InvokeBody,
        job: asyncio.Future[Ended],
        direct: direct_lines.DirectLines | None = None,
    ) -> AsyncIterator[bytes]:
        try:
            if direct is None:
                while not job.done():
                    yield direct_lines.ALIVE
                    await asyncio.wait({job}, timeout=ALIVE_INTERVAL)
            else:
                async for lines in direct.batches(job, ALIVE_INTERVAL):
                    yield lines
            yield _outcome(job.result())
        finally:
            if direct is not None:
                direct.open = False
            if not job.done():
                # The dispatcher hung up: its client is gone or its head died.
                self._detach(self._carry_on(call, job))

    async def _carry_on(self, call: InvokeBody, job: asyncio.Future[Ended]) -> None:
        """Hold the lease of an attempt whose dispatcher hung up, until the attempt ends.
        A cancelled task (its client left) or a claim that moved on is not renewed: its
        backend work stops, and a cancelled task is released."""
        carried = False
        try:
            while not job.done():
                lease_until = time.time() + call.lease_seconds
                if not await self.store.tasks.renew(
                    call.task_id, call.owner, call.attempt, lease_until, call.claim
                ):
                    break
                if not carried:
                    carried = True
                    log.info("task %s: its dispatcher is gone; the attempt goes on", call.task_id)
                await asyncio.wait({job}, timeout=call.lease_seconds / 3)
            if job.done():
                if not job.cancelled() and job.exception() is None and job.result().answer:
                    # Nobody takes it from the call: its client's head (stopping, still
                    # serving) hears it as any other.
                    await self.store.tasks.publish(call.reply_to, job.result().answer)
                return
        except RedisError as exc:  # the lease's expiry decides instead
            log.warning("could not hold the lease of %s: %s", call.task_id, exc)
        job.cancel()
        await self._release_if_cancelled(call)

    def _hands(self, call: InvokeBody) -> bool:
        """Whether the task's client waits on the dispatching head (every request of
        the offer path): what it produces can go back in the answer."""
        return call.reply_to == self.store.keys.results(call.owner)

    async def _forward(
        self, call: InvokeBody, port: int, direct: direct_lines.DirectLines | None = None
    ) -> Ended:
        headers = {
            "content-type": "application/json",
            "x-request-id": call.request_id,
            TASK_HEADER: call.task_id,  # an answer the head may cut short to move it
        }
        remaining = call.deadline - time.time()
        if remaining <= 0:
            await self._fail(call, "the request's deadline passed", "deadline_exceeded")
            return Ended("failed", "deadline passed")
        seq = 0
        read = 0  # chunks the client has read, as last noted (flow control)
        try:
            body, prior = await self._restated(call, port, remaining)
            resp = await self.hop.post(
                "127.0.0.1",
                port,
                call.endpoint,
                body.encode(),
                headers,
                total=remaining,
                connect_timeout=BACKEND_CONNECT,
            )
            async with resp:
                if resp.status != 200:
                    await self._fail_with_backend_error(call, resp.status, await resp.text())
                    return Ended("failed", f"backend answered {resp.status}")
                if not call.stream:
                    text = await resp.text()
                    if prior:  # a moved answer's continuation on vLLM
                        text = recounted(text, prior)
                    message = encode_raw(call.task_id, call.attempt, 0, "done", text, call.claim)
                    self.instances.first_output(call.instance_id)
                    # Its client waits on the dispatching head: the answer goes back there.
                    hand = self._hands(call)
                    if await self._finish(call, "done", message, publish=not hand) and hand:
                        return Ended("done", answer=message)
                    return Ended("done")
                async for batch in sse_batches(resp.iter_any()):
                    chunks, ended, error = stream_part(batch)
                    if prior:
                        chunks = [recounted(data, prior) for data in chunks]
                    if chunks:
                        message = encode_chunks(call.task_id, call.attempt, seq, chunks, call.claim)
                        if direct is None or not direct.put(message):
                            await self._publish_unsent(call, direct)
                            await self.store.tasks.publish(call.reply_to, message)
                        if seq == 0:
                            self.instances.first_output(call.instance_id)
                        seq += len(chunks)
                        if seq - read >= FLOW_WINDOW:
                            read = await self._await_reader(call, seq)
                    if error is not None:  # after the chunks that came before it
                        failed = self._backend_error(call, 500, error)
                        return await self._end(call, direct, "failed", failed)
                    if ended:
                        break
            done = ResultMessage(call.task_id, call.attempt, seq, "done", claim=call.claim).encode()
            return await self._end(call, direct, "done", done)
        except ReaderGone as exc:
            await self._fail(call, str(exc), "slow_client")
            return Ended("failed", str(exc))
        except TimeoutError:
            await self._fail(call, "the request's deadline passed", "deadline_exceeded")
            return Ended("failed", "deadline passed")
        except (HopError, aiohttp.ClientError) as exc:
            # The backend died or refused: another instance may serve it (the gateway
            # decides what to do with output it already relayed). "crashed", not "retry":
            # this request may be what killed it, so the head retries it alone.
            failed = f"backend of {call.instance_id} failed after {seq} chunk(s): {exc!r}"
            return Ended("crashed", failed)
        except RedisError as exc:
            return Ended("retry", f"worker lost Redis: {exc}")

    async def cut(self, instance_id: str, task_id: str, moved: dict[str, str]) -> bool:
        """Ask the instance's backend to end the non-streamed answer of ``task_id`` at
        its next token, to go on at ``moved``'s destination (``backends/cuts.py``);
        whether it will. A backend that cannot (vLLM's server) answers 404 too."""
        port = self.instances.port(instance_id)
        if port is None:
            return False
        url = f"http://127.0.0.1:{port}/sllm/cut"
        try:
            body = {"task": task_id, "moved": moved}
            async with self.http.post(url, json=body, timeout=CUT_TIMEOUT) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _await_reader(self, call: InvokeBody, seq: int) -> int:
        """Wait until the client has read to within FLOW_WINDOW of ``seq`` (this backend
        call is not read meanwhile: its generation pauses); what it has read. Bounded by
        the deadline (TimeoutError) and by twice the gateway's stall timeout (ReaderGone:
        nobody acknowledges, so no gateway reads this task any more); a task cancelled
        meanwhile ends this call from ``_carry_on``."""
        pause = 0.002
        waited = False
        give_up = time.time() + 2 * call.stall_seconds
        while True:
            read = await self.store.tasks.acked(call.task_id, call.attempt)
            if seq - read < FLOW_WINDOW:
                if waited:
                    log.debug("task %s: its client read on (%d of %d)", call.task_id, read, seq)
                return read
            if time.time() + pause >= call.deadline:
                raise TimeoutError
            if time.time() >= give_up:
                stalled = 2 * call.stall_seconds
                raise ReaderGone(f"nothing read the stream for {stalled:g} s; its gateway is gone")
            if not waited:
                waited = True
                log.debug("task %s: waiting for its client (%d of %d)", call.task_id, read, seq)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _restated(self, call: InvokeBody, port: int, remaining: float) -> tuple[str, int]:
        """The body to send and the tokens already produced: a resumed stream restated
        for a backend that does not continue from ``sllm_continue_from`` itself (vLLM),
        its produced text counted by the backend's own tokenizer (``/tokenize``)."""
        if CONTINUE_FIELD not in call.body:  # cheap: most bodies are not resumes
            return call.body, 0
        instance = self.instances.get(call.instance_id)
        if instance is None or get_backend(instance.backend).continues:
            return call.body, 0
        body = json.loads(call.body)
        if CONTINUE_FIELD not in body:
            return call.body, 0
        count = {
            "model": body.get("model"),
            "prompt": body[CONTINUE_FIELD],
            "add_special_tokens": False,
        }
        async with self.http.post(
            f"http://127.0.0.1:{port}/tokenize",
            json=count,
            timeout=aiohttp.ClientTimeout(total=remaining, sock_connect=BACKEND_CONNECT),
        ) as resp:
            resp.raise_for_status()
            prior = int((await resp.json())["count"])
        return json.dumps(restated(call.endpoint, body, prior)), prior

    async def _finish(
        self, call: InvokeBody, state: str, message: str, *, publish: bool = True
    ) -> bool:
        """Store (and publish) this attempt's terminal message; False if it is stale."""
        return await self.store.tasks.finish(
            call.task_id,
            call.model,
            call.instance_id,
            call.attempt,
            state,
            message,
            time.time(),
            self.result_ttl,
            call.claim,
            publish=publish,
        )

    async def _fail(self, call: InvokeBody, text: str, code: str) -> None:
        body = json.dumps(error_body(text, code))
        await self._finish(
            call, "failed", encode_raw(call.task_id, call.attempt, -1, "error", body, call.claim)
        )

    async def _publish_unsent(
        self, call: InvokeBody, direct: direct_lines.DirectLines | None
    ) -> None:
        """Publish what a stream's closed answer never sent, before what comes next."""
        for unsent in direct.unsent() if direct is not None else []:
            await self.store.tasks.publish(call.reply_to, unsent)

    async def _end(
        self, call: InvokeBody, direct: direct_lines.DirectLines | None, state: str, message: str
    ) -> Ended:
        """Store a stream's terminal message: it goes in the answer after the chunks
        when they went there (published, it could overtake them), else published."""
        handed = direct is not None and direct.open
        if not handed:
            await self._publish_unsent(call, direct)
        stored = await self._finish(call, state, message, publish=not handed)
        outcome, error = ("done", "") if state == "done" else ("failed", "backend error mid-stream")
        return Ended(outcome, error, message if handed and stored else "")

    async def _fail_with_backend_error(self, call: InvokeBody, status: int, text: str) -> None:
        await self._finish(call, "failed", self._backend_error(call, status, text))

    def _backend_error(self, call: InvokeBody, status: int, text: str) -> str:
        """The terminal message of a backend's error answer (as OpenAI's error object)."""
        try:
            parsed = json.loads(text)
            ok = isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
        except ValueError:
            ok = False
        if not ok:
            code = "invalid_request" if 400 <= status < 500 else "backend_error"
            text = json.dumps(error_body(f"backend answered {status}: {text[:500]}", code))
        return encode_raw(call.task_id, call.attempt, -1, "error", text, call.claim)

    async def _release_if_cancelled(self, call: InvokeBody) -> None:
        try:
            record = await self.store.tasks.get(call.task_id)
            if record is None or record.state != "cancelled" or record.attempt != call.attempt:
                return
            await self._fail(call, "the client cancelled the request", "cancelled")
        except RedisError as exc:  # the lease's expiry releases it instead
            log.warning("could not release cancelled task %s: %s", call.task_id, exc)

    def _detach(self, coro: Any) -> None:
        job = asyncio.create_task(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)


CUT_TIMEOUT = aiohttp.ClientTimeout(total=5)
# Chunks in one message at most: a message stays small beside the flow control window.
MAX_BATCH = 64


def stream_part(batch: list[str]) -> tuple[list[str], bool, str | None]:
    """A batch of SSE payloads as its chunks, whether the stream ended in it, and the
    backend's error that ended it (None: ``[DONE]`` or not ended); what comes after the
    end is not read."""
    for i, data in enumerate(batch):
        if data == "[DONE]":
            return batch[:i], True, None
        if data.startswith('{"error"'):
            return batch[:i], True, data
    return batch, False, None


async def sse_batches(body: AsyncIterator[bytes]) -> AsyncIterator[list[str]]:
    """The payloads of an SSE body's ``data:`` lines, as many in each list as the
    backend's writes brought at once (up to MAX_BATCH): a slow stream gives one chunk
    a list, a fast one (or a worker behind) many."""
    tail = b""
    async for received in body:
        lines = (tail + received).split(b"\n")
        tail = lines.pop()  # an unfinished line waits for the rest
        payloads = [line[5:].strip().decode() for line in lines if line.startswith(b"data:")]
        for start in range(0, len(payloads), MAX_BATCH):
            yield payloads[start : start + MAX_BATCH]
    if tail.startswith(b"data:"):
        yield [tail[5:].strip().decode()]


def _outcome(ended: Ended) -> bytes:
    """The last NDJSON line of an attempt's answer."""
    line: dict[str, str] = {"outcome": ended.outcome, "error": ended.error}
    if ended.answer:
        line["answer"] = ended.answer
    return json.dumps(line).encode() + b"\n"
