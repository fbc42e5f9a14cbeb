"""A streamed response that gives up on a client that reads nothing.

A client that stops reading a stream leaves each write waiting in uvicorn's flow
control once the socket's buffers are full. Flow control (``edge/messages.FLOW_WINDOW``)
keeps what waits for it small; this bounds how long it waits: a write that cannot go
out for ``stall`` seconds (seen within a quarter of that) ends the response, and
closing its body ends the request's task, as a client that hung up does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Mapping

from fastapi.sse import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send

from sllm.head.watch import Watch

log = logging.getLogger(__name__)


class StallGuardedStream(EventSourceResponse):
    def __init__(
        self,
        content: AsyncIterable[bytes],
        watch: Watch,
        stall: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, headers=headers)
        self.watch = watch
        self.stall = stall

    def on_stall(self) -> None:
        # The request's own line then says outcome=slow_client, and so does its metric.
        self.watch.stalled = True
        log.warning(
            "request %s (%s): its client read nothing for %g s; the request is cancelled",
            self.watch.request_id,
            self.watch.model,
            self.stall,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        sending_since = 0.0  # loop time the write in progress began; 0: none

        async def watched(message: Message) -> None:
            nonlocal sending_since
            sending_since = loop.time()
            await send(message)
            sending_since = 0.0

        # A watchdog rather than a timeout around each write: that costs 6 us a chunk.
        async def watch(ending: asyncio.Timeout) -> None:
            while True:
                await asyncio.sleep(self.stall / 4)
                if sending_since and loop.time() - sending_since >= self.stall:
                    # Before the body is closed, so the request ends as stalled.
                    self.on_stall()
                    ending.reschedule(loop.time())
                    return

        try:
            async with asyncio.timeout(None) as ending:
                watchdog = asyncio.create_task(watch(ending))
                try:
                    await super().__call__(scope, receive, watched)
                finally:
                    watchdog.cancel()
        except TimeoutError:
            if not ending.expired():
                raise  # not the watchdog's
            # Suspended at its yield, the body would otherwise close only when collected.
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
