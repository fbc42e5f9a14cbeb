"""OpenAI-shaped error answers, shared by every HTTP server sllm runs.

The head, the worker and the backend servers all answer errors as
``{"error": {"message", "type", "param", "code"}}`` so that a client, the worker's
proxy and the gateway read every failure the same way.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sllm.edge.errors import SllmError, TooManyRequests
from sllm.edge.protocol import ErrorResponse

# Every route may answer an error in this shape; declared on each app so that clients
# and schema checkers (tests/faults/test_schemas.py) know it. "4XX" also stands in for
# FastAPI's default 422, which sllm never sends: invalid bodies are a 400.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Refused (OpenAI's error shape)."},
    "5XX": {"model": ErrorResponse, "description": "Failed (OpenAI's error shape)."},
}


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    param: str | None = None,
    type_: str = "invalid_request_error",
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Invalid bodies -> 400 naming the field; SllmError -> its status; HTTP errors."""

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _param(first)
        message = str(first.get("msg", "invalid request"))
        if param:
            message = f"{param}: {message}"
        # Every field in the wrong is named (two unknown fields: both), the first in full.
        others = list(dict.fromkeys(p for p in map(_param, errors[1:]) if p and p != param))
        if others:
            message += f" (also: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"
        return error_response(400, message, "invalid_request", param=param)

    @app.exception_handler(SllmError)
    async def sllm_error(_: Request, exc: SllmError) -> JSONResponse:
        headers = dict(exc.headers or {})
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error_response(exc.status_code, str(exc.detail), code)


def _param(error: Any) -> str | None:
    """The dotted path of a validation error's field (without FastAPI's "body")."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    return ".".join(loc) or None
