"""The hot routes, served without FastAPI's per-request layers.

Every request through FastAPI passes Starlette's error middleware, the exception
middleware, the router's scan of every route, FastAPI's exit stacks and its dependency
solver before its endpoint runs: about 140 microseconds on this project's VM, repeated
on each hop of a request (the gateway's ``/v1/chat/completions``, then the worker's
``/invoke``), a fifth of the head's and the worker's CPU under load.

``LeanApp.serve_lean(path, ...)`` serves a declared POST route at ``path`` directly: its
body read through the app's own middleware (the body limit), parsed and validated as
FastAPI does (the route's body field, so errors read the same), its dependencies run
in order (``async def`` functions of the request and optional headers: anything else
is refused when the route is chosen), its exceptions answered by the app's exception
handlers, anything unhandled a 500 as Starlette's. The route stays declared, so
OpenAPI documents it.
"""

from __future__ import annotations

import email.message
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Check = Callable[[Request], Awaitable[None]]


class LeanApp(FastAPI):
    """A FastAPI app some of whose POST routes skip FastAPI's layers (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lean_routes: dict[str, tuple[APIRoute, tuple[Check, ...]]] = {}
        self._lean: dict[str, ASGIApp] = {}  # built at the first request, as Starlette's stack

    def serve_lean(
        self,
        *paths: str,
        router: APIRouter | None = None,
        dependencies: Sequence[params.Depends] = (),
    ) -> None:
        """Serve the POST routes at ``paths`` on the lean path: declared on ``router``
        (default: on the app itself), which the app includes without a prefix and with
        ``dependencies`` (they run first, as FastAPI runs them). Found in the declaring
        router, not the app's table, whose shape FastAPI changed (0.165 keeps included
        routers whole)."""
        declared = (router or self.router).routes
        for path in paths:
            matches = [
                r
                for r in declared
                if isinstance(r, APIRoute) and r.path == path and "POST" in (r.methods or ())
            ]
            if len(matches) != 1:
                raise ValueError(f"serve_lean: {len(matches)} POST routes at {path}, not one")
            included = [get_dependant(path=path, call=d.dependency) for d in dependencies
                        if d.dependency is not None]  # fmt: skip
            checks = _checks(path, [*included, *matches[0].dependant.dependencies])
            self._lean_routes[path] = (matches[0], checks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path in self._lean_routes:
                lean = self._lean.get(path)
                if lean is None:
                    lean = self._lean[path] = self._build(*self._lean_routes[path])
                scope["app"] = self  # what request.app reads, as Starlette sets it
                await lean(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _build(self, route: APIRoute, checks: tuple[Check, ...]) -> ASGIApp:
        """The route's handler inside the app's own middleware (the body limit), and
        Starlette's answer to an unhandled error outside it."""
        app: ASGIApp = _RouteHandler(route, checks, self)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
        return ServerErrorMiddleware(app, handler=handler, debug=self.debug)


class _RouteHandler:
    def __init__(self, route: APIRoute, checks: tuple[Check, ...], app: FastAPI) -> None:
        if route.body_field is None:
            raise ValueError(f"serve_lean: {route.path} takes no body")
        self.body_field = route.body_field
        self.endpoint = route.endpoint
        self.body_name = route.dependant.body_params[0].name
        self.request_name = route.dependant.request_param_name
        self.checks = checks
        self.handlers = app.exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._respond(request)
        except Exception as exc:  # nothing is sent yet: the app's handler answers it
            handler = _handler_for(self.handlers, exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        body = await _parsed_body(request)
        for check in self.checks:
            await check(request)
        if body is None:  # an empty body: FastAPI's own "Field required"
            missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            raise RequestValidationError([missing])
        value, errors = self.body_field.validate(body, {}, loc=("body",))
        if errors:
            raise RequestValidationError(errors, body=body)
        kwargs = {self.body_name: value}
        if self.request_name:
            kwargs[self.request_name] = request
        response: Response = await self.endpoint(**kwargs)
        return response


async def _parsed_body(request: Request) -> Any:
    """The body as FastAPI reads it: JSON when the content type says JSON, else bytes
    (which no model accepts), None when empty; invalid JSON is a validation error, a
    body that is not text a 400 of its own."""
    body = await request.body()
    if not body:
        return None
    content_type = request.headers.get("content-type")
    if not content_type:
        return body
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        return body
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from exc
    except ValueError as exc:  # not UTF-8, say
        raise HTTPException(400, "There was an error parsing the body") from exc


def _checks(path: str, dependencies: list[Dependant]) -> tuple[Check, ...]:
    """The dependencies as plain checks of the request, in FastAPI's order."""
    checks: list[Check] = []
    for dep in dependencies:
        if not _plain_check(dep):
            raise ValueError(
                f"serve_lean: {path} depends on {dep.call!r}, which is not an "
                "'async def' of the request and optional headers the lean path can run"
            )
        checks.append(_bound(dep))
    return tuple(checks)


def _plain_check(dep: Dependant) -> bool:
    """An ``async def`` of the request and optional headers only."""
    others = dep.path_params or dep.query_params or dep.cookie_params or dep.body_params
    headers_optional = all(not field.field_info.is_required() for field in dep.header_params)
    return (
        inspect.iscoroutinefunction(dep.call)
        and not (others or dep.dependencies)
        and headers_optional
    )


def _bound(dep: Dependant) -> Check:
    """The dependency as a check of the request: its headers read, validated and
    defaulted as FastAPI does."""
    call, request_name, headers = dep.call, dep.request_param_name, dep.header_params
    assert call is not None

    async def check(request: Request) -> None:
        kwargs: dict[str, Any] = {request_name: request} if request_name else {}
        for field in headers:
            raw = request.headers.get(field.alias)
            if raw is None:
                kwargs[field.name] = field.field_info.get_default(call_default_factory=True)
                continue
            value, errors = field.validate(raw, {}, loc=("header", field.alias))
            if errors:
                raise RequestValidationError(errors)
            kwargs[field.name] = value
        await call(**kwargs)

    return check


def _handler_for(handlers: dict[Any, Any], exc: Exception) -> Any:
    """The app's handler for ``exc``: the nearest class in its MRO, as Starlette looks."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
