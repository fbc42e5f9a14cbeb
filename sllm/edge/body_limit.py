"""Request bodies: over a size limit a 413, paused too long a 408, in OpenAI's error
shape, before any route parses them.

An ASGI middleware rather than a dependency: a dependency runs after FastAPI has read
and parsed the whole body, which is the work (and the memory) the limit is there to
spare. A body over the limit (a declared ``Content-Length``, or a chunked one counted as
it arrives) is read on and thrown away for up to ``DRAIN_SECONDS`` before the 413 goes
out: a client writes its whole body before it reads, and a connection closed under it
is a reset, not the 413. A client that sent ``Expect: 100-continue`` waits for our word
before it sends, and gets the 413 at once. Between two reads of a body at most
``body_timeout`` seconds pass (a slow POST holds a connection and a task otherwise).
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sllm.edge.errors import RequestError

# How long an oversized body is read (and discarded) so its client can read the 413.
DRAIN_SECONDS = 10.0


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class BodyTooSlow(RequestError):
    status = 408
    code = "request_timeout"


def too_large(limit: int, setting: str) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than this server's limit of {limit} bytes ({setting})"
    )


class BodyLimit:
    """ASGI middleware: at most ``max_bytes`` of request body per HTTP request, at most
    ``body_timeout`` seconds between two of its reads; ``setting`` names where the size
    limit is configured, for the error message."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        setting: str = "SLLM_MAX_BODY_BYTES",
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.setting = setting
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if "100-continue" not in headers.get("expect", "").lower():
                await _drain(receive)
            await self._refuse(too_large(self.max_bytes, self.setting), scope, receive, send)
            return

        received = 0
        more = True
        failure: RequestError | None = None
        started = False

        async def counting_receive() -> Message:
            nonlocal received, more, failure
            if failure is not None:
                raise failure
            if not more:  # the body is in; what comes now is the disconnect, whenever
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                failure = BodyTooSlow(
                    f"the request body paused for more than {self.body_timeout} s "
                    "(SLLM_BODY_TIMEOUT)"
                )
                raise failure from None
            if message["type"] != "http.request":
                more = False
                return message
            more = message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                failure = too_large(self.max_bytes, self.setting)
                if more:
                    await _drain(receive)
                    more = False
                raise failure
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Once the body failed, the answer is ours: whatever the route made of the
            # exception (FastAPI turns a failed body read into a 400) is dropped.
            if failure is not None and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except (BodyTooLarge, BodyTooSlow):
            if failure is None:
                raise
        if failure is not None and not started:
            await self._refuse(failure, scope, receive, send)

    async def _refuse(self, err: RequestError, scope: Scope, receive: Receive, send: Send) -> None:
        # What the client may still send is not read: the connection closes.
        response = JSONResponse(
            err.to_body(), status_code=err.status, headers={"Connection": "close"}
        )
        await response(scope, receive, send)


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a request body, for at most DRAIN_SECONDS."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return
