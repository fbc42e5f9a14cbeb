"""A stream's messages on their way back in /invoke's answer (worker/direct_lines.py)."""

from __future__ import annotations

import asyncio

from sllm.worker.direct_lines import ALIVE, DirectLines


async def test_lines_put_meanwhile_leave_together_then_the_answer_ends_with_the_attempt() -> None:
    lines = DirectLines()
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    got: list[bytes] = []

    async def read() -> None:
        async for batch in lines.batches(job, alive_every=0.05):
            got.append(batch)

    reader = asyncio.create_task(read())
    assert lines.put("a") and lines.put("b")
    await asyncio.sleep(0.01)
    assert got == [b"a\nb\n"]
    await asyncio.sleep(0.08)  # silence: an alive line
    assert got[1:] == [ALIVE]
    assert lines.put("c")
    job.set_result(None)  # ended: what was put still goes, then the answer ends
    await asyncio.wait_for(reader, 1)
    assert got[2:] == [b"c\n"]


async def test_once_closed_nothing_is_put_and_what_was_not_sent_is_handed_back() -> None:
    lines = DirectLines()
    assert lines.put("a") and lines.put("b")
    lines.open = False
    assert not lines.put("c")
    assert lines.unsent() == ["a", "b"]
    assert lines.unsent() == []
