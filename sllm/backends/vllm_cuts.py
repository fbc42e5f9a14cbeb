"""Cutting vLLM's non-streamed answers short to move them (live migration), as sllm's
own servers do (``backends/cuts.py``): an ASGI middleware that vLLM's OpenAI server
loads (``--middleware``, added by ``vllm_server``).

vLLM has no such route, but it aborts a request by its id, and an aborted request
still answers: the text so far, ``finish_reason`` "abort". So the middleware notes each
answer the worker names (``x-sllm-task``) under the id vLLM gives it (the worker's
``x-request-id``, which vLLM takes as its own), serves ``POST /sllm/cut`` by aborting
that id, and marks the answer that comes back as a cut one (``finish_reason`` CUT,
``sllm_moved``), which the gateway continues on the destination. Answers it cannot cut
(streams: the gateway moves those itself; several choices, tools, log-probabilities,
schemas, echo) answer 404, as sllm's servers do; the request's
body is read for that only when a cut is asked."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sllm.backends.cuts import TASK_HEADER, CutBody
from sllm.edge.protocol import CUT_FINISH, MOVED_FIELD

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MIDDLEWARE = "sllm.backends.vllm_cuts.VllmCuts"
CUT_PATH = "/sllm/cut"
# vLLM's id for the engine request of an answer, from the request id it was given: a
# chat answer's own; a completion's first (and, for a cut one, only) prompt's.
ENGINE_IDS = {"/v1/chat/completions": "chatcmpl-{}", "/v1/completions": "cmpl-{}-0"}
# A request body kept for the cut's decision at most; a larger one is not cut.
MAX_KEPT = 8 << 20
_SCHEMA_FIELDS = (
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


@dataclass
class Running:
    """An answer in flight that may be cut: its engine request and the body it came with."""

    path: str
    request_id: str
    # The request's body as it arrives; None once it grew past MAX_KEPT (not cut).
    body: bytearray | None = field(default_factory=bytearray)
    received: bool = False
    # Where it goes on, once a cut was asked (as the head said).
    moved: dict[str, str] | None = None

    @property
    def engine_id(self) -> str:
        return ENGINE_IDS[self.path].format(self.request_id)


def movable(path: str, body: dict[str, Any]) -> bool:
    """Whether a continuation of this answer's text would go on as it would have (as
    ``cuts.cuttable`` judges sllm's own): one choice, text only, nothing carried beside
    the text, not a stream."""
    response_format, logprobs = body.get("response_format"), body.get("logprobs")
    return (
        not body.get("stream")
        and body.get("n") in (None, 1)
        and body.get("best_of") in (None, 1)
        and not body.get("tools")
        and (logprobs is None or logprobs is False)  # a completion's 0 asks for them
        and body.get("prompt_logprobs") is None
        and not body.get("echo")
        and (response_format is None or _plain_text(response_format))
        and all(body.get(name) is None for name in _SCHEMA_FIELDS)
        and (path != "/v1/completions" or isinstance(body.get("prompt"), str))
    )


def _plain_text(response_format: object) -> bool:
    return isinstance(response_format, dict) and response_format.get("type", "text") == "text"


def marked_cut(answer: bytes, moved: dict[str, str]) -> bytes | None:
    """The answer vLLM gave an aborted request, marked as cut to go on at ``moved``;
    None when it is not one (it ended on its own first: it goes out as it is)."""
    try:
        body = json.loads(answer)
        [choice] = body["choices"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(choice, dict) or choice.get("finish_reason") != "abort":
        return None
    choice["finish_reason"] = CUT_FINISH
    body[MOVED_FIELD] = moved
    return json.dumps(body).encode()


class VllmCuts:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.running: dict[str, Running] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if scope["path"] == CUT_PATH:
            return await self._cut(scope, receive, send)
        path = scope["path"]
        headers = dict(scope["headers"]) if path in ENGINE_IDS else {}
        task, request_id = headers.get(TASK_HEADER.encode()), headers.get(b"x-request-id")
        if task is None or request_id is None:
            return await self.app(scope, receive, send)
        name = task.decode("latin-1")
        if name in self.running:  # the same task twice: its first keeps the name
            return await self.app(scope, receive, send)
        run = self.running[name] = Running(path, request_id.decode("latin-1"))
        try:
            await self.app(scope, self._kept(run, receive), self._marked(name, run, send))
        finally:
            if self.running.get(name) is run:
                del self.running[name]

    def _kept(self, run: Running, receive: Receive) -> Receive:
        async def kept() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not run.received:
                run.received = not message.get("more_body", False)
                if run.body is not None:
                    run.body += message.get("body", b"")
                    if len(run.body) > MAX_KEPT:
                        run.body = None  # too large to keep: not cut
            return message

        return kept

    def _marked(self, name: str, run: Running, send: Send) -> Send:
        """``send``, holding back a cut answer to mark it."""
        held: list[Message] = []
        parts: list[bytes] = []

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.running.get(name) is run:
                    del self.running[name]  # it answers: too late to cut from here on
                if run.moved is None or message["status"] != 200:
                    run.moved = None
                    return await send(message)
                held.append(message)
                return None
            if not held or message["type"] != "http.response.body":
                return await send(message)
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            assert run.moved is not None
            answer = b"".join(parts)
            answer = marked_cut(answer, run.moved) or answer
            start = held.pop()
            length = str(len(answer)).encode()
            start["headers"] = [
                (k, length if k.lower() == b"content-length" else v) for k, v in start["headers"]
            ]
            await send(start)
            await send({"type": "http.response.body", "body": answer, "more_body": False})
            return None

        return marked

    async def _cut(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /sllm/cut``: abort the named task's answer to move it; 404 when no
        answer of that task runs here that can be cut."""
        asked = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the worker hung up
            asked += message.get("body", b"")
            if not message.get("more_body", False) or len(asked) > 64 << 10:
                break
        try:
            cut = CutBody.model_validate_json(bytes(asked))
        except ValidationError as exc:
            detail = exc.json(include_url=False, include_input=False)
            return await _answer(send, 422, f'{{"detail": {detail}}}'.encode())
        run = self.running.get(cut.task)
        if run is None or run.moved is not None or not run.received or not _movable(run):
            return await _answer(send, 404, b'{"cut": false}')
        run.moved = cut.moved
        await scope["app"].state.engine_client.abort(run.engine_id)
        await _answer(send, 200, b'{"cut": true}')


def _movable(run: Running) -> bool:
    if run.body is None:
        return False
    try:
        body = json.loads(run.body)
    except ValueError:
        return False
    return isinstance(body, dict) and movable(run.path, body)


async def _answer(send: Send, status: int, data: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
