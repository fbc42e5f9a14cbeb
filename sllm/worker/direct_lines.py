"""A stream's result messages going back in ``/invoke``'s answer, not through Redis.

When a stream's client waits on the dispatching head itself, that head reads the
answer to ``/invoke`` anyway: the chunks go there as NDJSON lines, in order with the
outcome line that ends the answer, and save Redis a publish and the worker a round trip
per message. Unbounded here, bounded by the stream's flow control: the worker runs at
most a window of chunks ahead of what its client read (``FLOW_WINDOW``), and this
head's reader notes what it read as for any stream. Once the answer is closed (the
dispatcher hung up) the attempt publishes, first what it had not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

ALIVE = b'{"alive":true}\n'


class DirectLines:
    def __init__(self) -> None:
        self.open = True
        self._lines: list[bytes] = []
        self._ready = asyncio.Event()

    def put(self, message: str) -> bool:
        """Send ``message`` in the answer; False once it is closed (publish it)."""
        if not self.open:
            return False
        self._lines.append(message.encode() + b"\n")
        self._ready.set()
        return True

    def unsent(self) -> list[str]:
        """The messages put but never sent, once closed (to publish, in order)."""
        lines, self._lines = self._lines, []
        return [line[:-1].decode() for line in lines]

    async def batches(self, job: asyncio.Future[Any], alive_every: float) -> AsyncIterator[bytes]:
        """The lines put, those put meanwhile joined, until ``job`` (the attempt) ended;
        an alive line after each ``alive_every`` seconds of silence."""
        job.add_done_callback(lambda _: self._ready.set())
        while True:
            try:
                # A timeout, not wait_for: that made a task for every batch.
                async with asyncio.timeout(alive_every):
                    await self._ready.wait()
            except TimeoutError:
                yield ALIVE
                continue
            self._ready.clear()
            if self._lines:
                lines, self._lines = self._lines, []
                yield b"".join(lines)
            if job.done() and not self._lines:
                return
