"""An async generator run ahead of its reader, in a task of its own.

The reader can then wait for the next event with a timeout (to send a keep-alive, or to
decide how a response begins) without cancelling the generator in the middle of a step,
and take the events that came meanwhile in one go (a stream writes them as one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

Item = tuple[str, object]


class ReadAhead(Generic[T]):
    """``events`` read up to ``ahead`` events ahead. Close it (``aclose``) when done:
    that also closes the generator, so its ``finally`` runs now, not at garbage
    collection."""

    def __init__(self, events: AsyncGenerator[T, None], ahead: int = 1) -> None:
        self._events = events
        # Bounded: a reader that stops reading stops the generator (flow control).
        self._queue: asyncio.Queue[Item] = asyncio.Queue(ahead)
        # An item taken by ``ready`` that it does not return: the next ``next``'s.
        self._held: Item | None = None
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
        if self._held is not None:
            item, self._held = self._held, None
        else:
            # A timeout, not wait_for: that made a task for every event.
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        kind, value = item
        if kind == "end":
            raise StopAsyncIteration
        if kind == "raised":
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    def ready(self, wanted: Callable[[object], bool]) -> list[T]:
        """The events already produced, in order, up to the first that is not
        ``wanted`` (or the end), which the next ``next`` returns."""
        out: list[T] = []
        while self._held is None and not self._queue.empty():
            item = self._queue.get_nowait()
            if item[0] != "event" or not wanted(item[1]):
                self._held = item
                break
            out.append(item[1])  # type: ignore[arg-type]
        return out

    async def aclose(self) -> None:
        self._producer.cancel()
        await asyncio.gather(self._producer, return_exceptions=True)
