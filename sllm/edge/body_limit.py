"""Request bodies over a size limit get a 413 in OpenAI's error shape, before any
route parses them.

An ASGI middleware rather than a dependency: a dependency runs after FastAPI has read
and parsed the whole body, which is the work (and the memory) the limit is there to
spare. A declared ``Content-Length`` over the limit is answered at once, unread; a body
without one (chunked) is counted as it is received, and the request fails on the chunk
that crosses the limit, whatever the route was doing with it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sllm.edge.errors import RequestError


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"


def too_large(limit: int, setting: str) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than this server's limit of {limit} bytes ({setting})"
    )


class BodyLimit:
    """ASGI middleware: at most ``max_bytes`` of request body per HTTP request;
    ``setting`` names where the limit is configured, for the error message."""

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str = "SLLM_MAX_BODY_BYTES") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                raise too_large(self.max_bytes, self.setting)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise too_large(self.max_bytes, self.setting)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Once the body went over, the answer is ours: whatever the route made of
            # the exception (FastAPI turns a failed body read into a 400) is dropped.
            if over and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = too_large(self.max_bytes, self.setting)
        # The client may still be sending: close the connection rather than read on.
        response = JSONResponse(
            err.to_body(), status_code=err.status, headers={"Connection": "close"}
        )
        await response(scope, receive, send)
