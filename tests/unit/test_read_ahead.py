"""An async generator read ahead of its reader: timeouts never cancel it midway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from sllm.head.read_ahead import ReadAhead


async def test_a_timed_out_wait_loses_no_event_and_the_end_is_reported() -> None:
    release = asyncio.Event()

    async def events() -> AsyncGenerator[int, None]:
        yield 1
        await release.wait()
        yield 2

    ahead = ReadAhead(events())
    assert await ahead.next(1.0) == 1
    with pytest.raises(TimeoutError):
        await ahead.next(0.05)
    release.set()
    assert await ahead.next(1.0) == 2
    with pytest.raises(StopAsyncIteration):
        await ahead.next(1.0)
    await ahead.aclose()


async def test_what_the_generator_raises_reaches_the_reader() -> None:
    async def events() -> AsyncGenerator[int, None]:
        yield 1
        raise ValueError("broken")

    ahead = ReadAhead(events())
    assert await ahead.next(1.0) == 1
    with pytest.raises(ValueError, match="broken"):
        await ahead.next(1.0)
    await ahead.aclose()


async def test_closing_runs_the_generators_cleanup_at_once() -> None:
    cleaned: list[str] = []

    async def events() -> AsyncGenerator[int, None]:
        try:
            yield 1
            yield 2  # never read: the generator waits here, one event ahead
            await asyncio.sleep(3600)
        finally:
            cleaned.append("done")

    ahead = ReadAhead(events())
    assert await ahead.next(1.0) == 1
    await asyncio.sleep(0.01)  # the pump has put 2 and waits to put more
    await ahead.aclose()
    assert cleaned == ["done"]


async def test_closing_a_generator_waiting_for_its_next_event_cleans_it_up() -> None:
    cleaned: list[str] = []

    async def events() -> AsyncGenerator[int, None]:
        try:
            await asyncio.sleep(3600)
            yield 1
        finally:
            cleaned.append("done")

    ahead = ReadAhead(events())
    with pytest.raises(TimeoutError):
        await ahead.next(0.01)
    await ahead.aclose()
    assert cleaned == ["done"]


async def test_events_produced_meanwhile_are_taken_in_one_go_up_to_an_unwanted_one() -> None:
    async def events() -> AsyncGenerator[object, None]:
        for item in (b"a", b"b", b"c", ValueError("an error event"), b"d"):
            yield item

    ahead: ReadAhead[object] = ReadAhead(events(), ahead=8)
    assert await ahead.next(1.0) == b"a"
    await asyncio.sleep(0.01)  # the generator runs ahead
    assert ahead.ready(lambda e: isinstance(e, bytes)) == [b"b", b"c"]
    assert ahead.ready(lambda e: isinstance(e, bytes)) == []  # the error waits for next
    assert isinstance(await ahead.next(1.0), ValueError)
    assert await ahead.next(1.0) == b"d"
    with pytest.raises(StopAsyncIteration):
        await ahead.next(1.0)
    await ahead.aclose()


async def test_the_generator_runs_no_further_ahead_than_allowed() -> None:
    produced = 0

    async def events() -> AsyncGenerator[int, None]:
        nonlocal produced
        while True:
            produced += 1
            yield produced

    ahead = ReadAhead(events(), ahead=4)
    await asyncio.sleep(0.05)
    # Four wait in the queue, a fifth in the generator's hands.
    assert produced <= 5
    assert ahead.ready(lambda _: True) == [1, 2, 3, 4]
    await ahead.aclose()
