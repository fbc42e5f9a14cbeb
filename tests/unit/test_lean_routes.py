"""LeanApp: a route served on the lean path answers every request exactly as FastAPI
answers it (the same app declared twice, one plain), without FastAPI's router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from sllm.edge.api_errors import install_error_handlers
from sllm.edge.body_limit import BodyLimit
from sllm.edge.errors import AuthenticationError, RequestError, TooManyRequests
from sllm.edge.lean_routes import LeanApp

pytestmark = pytest.mark.timeout(30)

LIMIT = 2000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    count: int = 1


async def needs_key(request: Request) -> None:
    if request.headers.get("authorization") != "Bearer k":
        raise AuthenticationError("no key")


async def rate_limited(request: Request) -> None:
    if request.headers.get("x-limit"):
        raise TooManyRequests("slow down", retry_after=3)


async def tagged(
    x_tag: Annotated[str | None, Header()] = None,
    x_count: Annotated[int | None, Header()] = None,
) -> None:
    if x_tag == "bad":
        raise RequestError("a bad tag", param="X-Tag")


# Where a hot route is declared: on the app with its checks, or in a router the app
# includes with them (as the head's gateway routes are).
STYLES = ("on the app", "in a router")
CHECKS = [Depends(needs_key), Depends(rate_limited), Depends(tagged)]


def declare(app: FastAPI, style: str) -> tuple[FastAPI, APIRouter | None]:
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=LIMIT)
    router = APIRouter() if style == "in a router" else None

    async def echo(body: Body, request: Request) -> Response:
        if body.text == "http":
            raise HTTPException(404, "no such thing")
        if body.text == "boom":
            raise RuntimeError("a bug")
        if body.text == "stream":

            async def parts() -> AsyncIterator[bytes]:
                for i in range(body.count):
                    yield f"part {i}\n".encode()

            return StreamingResponse(parts(), media_type="text/plain")
        answer = {"text": body.text * body.count, "router": "router" in request.scope}
        return JSONResponse(answer, headers={"x-echo": "1"})

    if router is None:
        app.post("/echo", dependencies=CHECKS)(echo)
    else:
        router.post("/echo")(echo)
        app.include_router(router, dependencies=CHECKS)
    return app, router


def lean_app(style: str = STYLES[0]) -> LeanApp:
    app, router = declare(LeanApp(), style)
    assert isinstance(app, LeanApp)
    if router is None:
        app.serve_lean("/echo")
    else:
        app.serve_lean("/echo", router=router, dependencies=CHECKS)
    return app


KEY = {"authorization": "Bearer k"}
JSON = {**KEY, "content-type": "application/json"}
VND = "application/vnd.sllm+json; charset=utf-8"
CASES: list[tuple[str, dict[str, Any]]] = [
    ("valid", {"json": {"text": "ab", "count": 2}, "headers": KEY}),
    ("a +json type", {"content": b'{"text": "x"}', "headers": {**KEY, "content-type": "a/b+json"}}),
    ("vnd+json", {"content": b'{"text": "x"}', "headers": {**KEY, "content-type": VND}}),
    ("invalid JSON", {"content": b'{"text": ', "headers": JSON}),
    ("not UTF-8", {"content": b'{"text": "\xff\xfe"}', "headers": JSON}),
    ("a missing field", {"json": {"count": 2}, "headers": KEY}),
    ("an unknown field", {"json": {"text": "a", "other": 1, "more": 2}, "headers": KEY}),
    ("a wrong type", {"json": {"text": "a", "count": "many"}, "headers": KEY}),
    ("a list", {"json": [1, 2], "headers": KEY}),
    ("no content type", {"content": b'{"text": "x"}', "headers": KEY}),
    ("text/plain", {"content": b'{"text": "x"}', "headers": {**KEY, "content-type": "text/plain"}}),
    ("form-encoded", {"data": {"text": "x"}, "headers": KEY}),
    ("an empty body", {"content": b"", "headers": JSON}),
    ("too large", {"json": {"text": "x" * LIMIT}, "headers": KEY}),
    ("no key", {"json": {"text": "x"}}),
    ("no key, invalid JSON", {"content": b"{", "headers": {"content-type": "application/json"}}),
    ("no key, a missing field", {"json": {}}),
    ("a good header", {"json": {"text": "x"}, "headers": {**KEY, "x-tag": "ok", "x-count": "2"}}),
    ("a bad header", {"json": {"text": "x"}, "headers": {**KEY, "x-tag": "bad"}}),
    ("a header not an int", {"json": {"text": "x"}, "headers": {**KEY, "x-count": "two"}}),
    ("rate limited", {"json": {"text": "x"}, "headers": {**KEY, "x-limit": "1"}}),
    ("an HTTP error", {"json": {"text": "http"}, "headers": KEY}),
    ("a bug", {"json": {"text": "boom"}, "headers": KEY}),
    ("a stream", {"json": {"text": "stream", "count": 3}, "headers": KEY}),
]


async def answer(app: FastAPI, kwargs: dict[str, Any], method: str = "POST") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, "/echo", **kwargs)


def seen(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    keep = ("content-type", "retry-after", "x-echo", "connection")
    content = response.content
    if response.headers.get("x-echo"):  # the one difference: whether a router ran
        content = response.content.replace(b',"router":true', b"").replace(b',"router":false', b"")
    return response.status_code, content, {k: response.headers.get(k, "") for k in keep}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("case", "kwargs"), CASES, ids=[c for c, _ in CASES])
async def test_the_lean_path_answers_as_fastapi_does(
    case: str, kwargs: dict[str, Any], style: str
) -> None:
    plain = await answer(declare(FastAPI(), style)[0], kwargs)
    lean = await answer(lean_app(style), kwargs)
    assert seen(lean) == seen(plain)
    if plain.headers.get("x-echo"):
        assert plain.json()["router"] is True and lean.json()["router"] is False
    if case == "valid":
        assert lean.json()["text"] == "abab"
    assert lean.status_code in {200, 400, 401, 404, 413, 429, 500}


async def test_other_methods_and_paths_go_through_fastapi() -> None:
    app = lean_app()
    assert (await answer(app, {}, method="GET")).status_code == 405
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/openapi.json")).json()["paths"]["/echo"]["post"]


def test_a_route_the_lean_path_cannot_run_is_refused_up_front() -> None:
    app = LeanApp()

    async def with_query(request: Request, q: str = Query("")) -> None:
        return None

    async def with_a_required_header(x_must: Annotated[str, Header()]) -> None:
        return None

    def not_async(request: Request) -> None:
        return None

    for check in (with_query, with_a_required_header, not_async):

        @app.post(f"/{check.__name__}", dependencies=[Depends(check)])
        async def route(body: Body) -> dict[str, Any]:
            return {}

        with pytest.raises(ValueError, match="not an 'async def' of the request and optional"):
            app.serve_lean(f"/{check.__name__}")
    with pytest.raises(ValueError, match="0 POST routes at /nowhere"):
        app.serve_lean("/nowhere")
