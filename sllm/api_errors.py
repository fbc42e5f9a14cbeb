"""OpenAI-shaped error answers, shared by every HTTP server sllm runs.

The head, the worker and the backend servers all answer errors as
``{"error": {"message", "type", "param", "code"}}`` so that a client, the worker's
proxy and the gateway read every failure the same way.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sllm.errors import SllmError


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
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = str(first.get("msg", "invalid request"))
        if param:
            message = f"{param}: {message}"
        return error_response(400, message, "invalid_request", param=param)

    @app.exception_handler(SllmError)
    async def sllm_error(_: Request, exc: SllmError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error_response(exc.status_code, str(exc.detail), code)
