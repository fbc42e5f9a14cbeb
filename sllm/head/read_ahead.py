"""An async generator run ahead of its reader, in a task of its own.

The reader can then wait for the next event with a timeout (to send a keep-alive, or to
decide how a response begins) without cancelling the generator in the middle of a step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """``events`` read one event ahead. Close it (``aclose``) when done: that also
    closes the generator, so its ``finally`` runs now, not at garbage collection."""

    def __init__(self, events: AsyncGenerator[T, None]) -> None:
        self._events = events
        # One slot: the generator runs at most one event ahead of the reader.
        self._queue: asyncio.Queue[tuple[str, T | BaseException | None]] = asyncio.Queue(1)
        self._producer = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for event in self._events:
                await self._queue.put(("event", event))
            await self._queue.put(("end", None))
        except Exception as exc:  # handed to the reader; cancellation is not
            await self._queue.put(("raised", exc))
        finally:
            await self._events.aclose()

    async def next(self, timeout: float) -> T:
        """The next event. Raises TimeoutError when none came within ``timeout`` seconds
        (the generator goes on), StopAsyncIteration once it ended, and what it raised."""
        kind, value = await asyncio.wait_for(self._queue.get(), timeout)
        if kind == "end":
            raise StopAsyncIteration
        if kind == "raised":
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    async def aclose(self) -> None:
        self._producer.cancel()
        await asyncio.gather(self._producer, return_exceptions=True)
