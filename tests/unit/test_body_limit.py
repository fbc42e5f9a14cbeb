"""BodyLimit: oversized request bodies get a 413 in OpenAI's shape before a route runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from sllm.edge.api_errors import install_error_handlers
from sllm.edge.body_limit import BodyLimit

pytestmark = pytest.mark.timeout(30)

LIMIT = 1000


class Body(BaseModel):
    text: str


def make_app() -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=LIMIT)
    ran: list[str] = []

    @app.post("/parsed")
    async def parsed(body: Body) -> dict[str, Any]:
        ran.append("parsed")
        return {"length": len(body.text)}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, Any]:
        # Reads the body itself, as the worker's /invoke once did.
        data = await request.body()
        ran.append("raw")
        return {"length": len(data)}

    return app, ran


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"content-type": "application/json"},
    )


def body_of(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes."""
    return b'{"text": "' + b"x" * (size - 12) + b'"}'


async def chunks(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_413(resp: httpx.Response) -> None:
    assert resp.status_code == 413, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert str(LIMIT) in error["message"] and "SLLM_MAX_BODY_BYTES" in error["message"]


@pytest.mark.parametrize("path", ["/parsed", "/raw"])
async def test_a_declared_length_over_the_limit_is_refused_unread(path: str) -> None:
    app, ran = make_app()
    async with client(app) as c:
        resp = await c.post(path, content=body_of(LIMIT + 1))
    assert_413(resp)
    assert resp.headers["connection"] == "close"
    assert ran == []


@pytest.mark.parametrize("path", ["/parsed", "/raw"])
async def test_a_chunked_body_is_counted_as_it_arrives(path: str) -> None:
    app, ran = make_app()
    async with client(app) as c:
        resp = await c.post(path, content=chunks(body_of(LIMIT * 3)))
        assert "content-length" not in resp.request.headers
    assert_413(resp)
    assert ran == []


@pytest.mark.parametrize("path", ["/parsed", "/raw"])
async def test_bodies_up_to_the_limit_pass_untouched(path: str) -> None:
    app, ran = make_app()
    async with client(app) as c:
        declared = await c.post(path, content=body_of(LIMIT))
        chunked = await c.post(path, content=chunks(body_of(LIMIT)))
    assert declared.status_code == chunked.status_code == 200, declared.text
    expected = LIMIT - 12 if path == "/parsed" else LIMIT
    assert declared.json() == chunked.json() == {"length": expected}
    assert ran == [path.strip("/")] * 2


async def test_other_errors_still_come_from_the_app() -> None:
    app, _ = make_app()
    async with client(app) as c:
        resp = await c.post("/parsed", content=b'{"nope": 1}')
        missing = await c.get("/nowhere")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "text"
    assert missing.status_code == 404


async def test_the_setting_is_named_in_the_message() -> None:
    app = FastAPI()
    app.add_middleware(BodyLimit, max_bytes=10, setting="SLLM_WORKER_MAX_BODY_BYTES")
    async with client(app) as c:
        resp = await c.post("/", content=b"x" * 11)
    assert resp.status_code == 413
    assert "SLLM_WORKER_MAX_BODY_BYTES" in resp.json()["error"]["message"]
