"""The middleware that lets the head cut vLLM's non-streamed answers short to move them:
which answers it cuts, and what it does to an answer in flight, in front of an app that
answers as vLLM's server does (an aborted request answers its text so far, finish
reason "abort"). Real vLLM behind a real cluster: tests/e2e/test_vllm.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sllm.backends import vllm_cuts
from sllm.backends.vllm_cuts import ENGINE_IDS, VllmCuts, marked_cut, movable

pytestmark = pytest.mark.timeout(30)

CHAT = "/v1/chat/completions"
MOVED = {"to": "i-2", "reason": "operator"}


@pytest.mark.parametrize(
    ("path", "changes", "expected"),
    [
        (CHAT, {}, True),
        (CHAT, {"n": 1, "logprobs": False, "response_format": {"type": "text"}}, True),
        (CHAT, {"stream": True}, False),
        (CHAT, {"n": 2}, False),
        (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}]}, False),
        (CHAT, {"logprobs": True}, False),
        (CHAT, {"response_format": {"type": "json_object"}}, False),
        (CHAT, {"structured_outputs": {"regex": "a+"}}, False),
        (CHAT, {"response_format": "text"}, False),  # not what vLLM takes: left alone
        ("/v1/completions", {"prompt": "Once"}, True),
        ("/v1/completions", {"prompt": "Once", "logprobs": 0}, False),
        ("/v1/completions", {"prompt": "Once", "echo": True}, False),
        ("/v1/completions", {"prompt": ["Once", "Twice"]}, False),
        ("/v1/completions", {"prompt": "Once", "best_of": 2}, False),
    ],
)
def test_only_answers_a_continuation_reproduces_are_cut(
    path: str, changes: dict[str, Any], expected: bool
) -> None:
    assert movable(path, {"model": "m", "max_tokens": 9, **changes}) is expected


def test_an_aborted_answer_is_marked_cut_and_a_whole_one_left_as_it_is() -> None:
    aborted = {"id": "x", "choices": [{"index": 0, "finish_reason": "abort", "text": "Onc"}]}
    marked = json.loads(marked_cut(json.dumps(aborted).encode(), MOVED) or b"")
    assert marked["choices"][0]["finish_reason"] == "sllm_cut"
    assert marked["sllm_moved"] == MOVED and marked["choices"][0]["text"] == "Onc"
    whole = {"id": "x", "choices": [{"index": 0, "finish_reason": "length", "text": "Once"}]}
    assert marked_cut(json.dumps(whole).encode(), MOVED) is None
    assert marked_cut(b"not json", MOVED) is None


class Engine:
    """vLLM's engine as its server sees it: requests by id, aborted on demand."""

    def __init__(self) -> None:
        self.aborted: dict[str, asyncio.Event] = {}

    def running(self, engine_id: str) -> asyncio.Event:
        return self.aborted.setdefault(engine_id, asyncio.Event())

    async def abort(self, engine_id: str) -> None:
        self.running(engine_id).set()


def vllm_like() -> tuple[FastAPI, Engine]:
    app = FastAPI()
    engine = app.state.engine_client = Engine()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        engine_id = ENGINE_IDS[CHAT].format(request.headers["x-request-id"])
        if body.get("stream"):

            async def chunks() -> Any:
                yield "data: {}\n\n"
                await asyncio.sleep(0.3)
                yield "data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        try:
            await asyncio.wait_for(engine.running(engine_id).wait(), body["seconds"])
            finish, text = "abort", "Once upon"
        except TimeoutError:
            finish, text = "length", "Once upon a time"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        return JSONResponse({"id": engine_id, "choices": [{**choice, "finish_reason": finish}]})

    app.add_middleware(VllmCuts)
    return app, engine


async def ask_and_cut(
    http: httpx.AsyncClient, body: dict[str, Any], task: str = "t1"
) -> tuple[httpx.Response, httpx.Response]:
    headers = {"x-request-id": "r1", "x-sllm-task": task}
    answer = asyncio.create_task(http.post(CHAT, json=body, headers=headers))
    await asyncio.sleep(0.1)  # its body read, it generates
    cut = await http.post("/sllm/cut", json={"task": "t1", "moved": MOVED})
    return cut, await answer


@pytest.fixture
async def http() -> Any:
    app, _ = vllm_like()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vllm") as client:
        yield client


async def test_a_cut_answer_ends_at_once_marked_with_where_it_goes_on(
    http: httpx.AsyncClient,
) -> None:
    cut, answer = await ask_and_cut(http, {"seconds": 10})
    assert cut.status_code == 200 and cut.json() == {"cut": True}
    body = answer.json()
    assert body["id"] == "chatcmpl-r1" and body["sllm_moved"] == MOVED
    assert body["choices"][0]["finish_reason"] == "sllm_cut"
    assert body["choices"][0]["message"]["content"] == "Once upon"
    assert int(answer.headers["content-length"]) == len(answer.content)
    # It ended: nothing to cut any more.
    again = await http.post("/sllm/cut", json={"task": "t1", "moved": MOVED})
    assert again.status_code == 404 and again.json() == {"cut": False}


async def test_what_cannot_be_cut_is_refused_and_runs_on(http: httpx.AsyncClient) -> None:
    for body in ({"seconds": 0.3, "n": 2}, {"seconds": 0.3, "stream": True}):
        cut, answer = await ask_and_cut(http, body)
        assert cut.status_code == 404, body
        assert answer.status_code == 200 and "sllm_moved" not in answer.text
    # A task no answer here runs as, and an answer the worker did not name.
    cut, answer = await ask_and_cut(http, {"seconds": 0.3}, task="t2")
    assert cut.status_code == 404
    assert answer.json()["choices"][0]["finish_reason"] == "length"
    bad = await http.post("/sllm/cut", content=b"{not json")
    assert bad.status_code == 422


async def test_a_body_too_large_to_keep_is_dropped_and_not_cut(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm_cuts, "MAX_KEPT", 64)
    cut, answer = await ask_and_cut(http, {"seconds": 0.3, "padding": "x" * 100})
    assert cut.status_code == 404
    assert answer.json()["choices"][0]["finish_reason"] == "length"
    # Arriving in parts: nothing is kept past the bound, not even the parts after it.
    parts = [b"a" * 50, b"b" * 50, b"c" * 10]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    run = vllm_cuts.Running(CHAT, "r1")
    kept = VllmCuts(lambda *_: asyncio.sleep(0))._kept(run, receive)
    for _ in parts:
        await kept()
    assert run.received and run.body is None


async def test_an_answer_that_ends_before_its_cut_goes_out_whole() -> None:
    app, engine = vllm_like()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vllm") as http:
        # The engine finishes the request although it was aborted (the race of the
        # abort with the last step): the answer is a whole one, not marked.
        engine.abort = lambda engine_id: asyncio.sleep(0)  # type: ignore[method-assign]
        cut, answer = await ask_and_cut(http, {"seconds": 0.3})
    assert cut.status_code == 200
    body = answer.json()
    assert body["choices"][0]["finish_reason"] == "length" and "sllm_moved" not in body
