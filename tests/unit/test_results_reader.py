"""The gateway's per-task reader: attempts, sequence numbers, polling. No IO."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from sllm.edge.errors import DeadlineExceeded, FatalError, SllmError
from sllm.edge.messages import ACK_EVERY, ResultMessage
from sllm.head.results import AttemptRestarted, MessageLost, TaskResults
from sllm.kv.bus import RESYNC, Delivery
from sllm.kv.tasks import TaskStore


class StoredOutcome:
    def __init__(
        self,
        state: str | None = "running",
        result: str | None = None,
        attempt: int = 0,
        claimed: str | None = None,
    ) -> None:
        self.state, self.result, self.current, self.claim = state, result, attempt, claimed

    async def state_and_result(self, task_id: str) -> tuple[str | None, str | None]:
        return self.state, self.result

    async def attempt(self, task_id: str) -> int | None:
        """The task's current attempt; None: not recorded."""
        return self.current or None

    async def claimed(self, task_id: str) -> str | None:
        return self.claim


def reader(items: list[Any], stored: StoredOutcome | None = None, **kw: Any) -> TaskResults:
    queue: asyncio.Queue[Delivery] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    store = cast(TaskStore, stored or StoredOutcome())
    return TaskResults("t", queue, store, kw.pop("deadline", time.time() + 5), **kw)


async def drain(r: TaskResults) -> list[ResultMessage]:
    return [m async for m in r.messages()]


def chunk(attempt: int, seq: int) -> ResultMessage:
    return ResultMessage("t", attempt, seq, "chunk", {"n": seq})


async def test_stale_attempt_is_dropped_and_counted() -> None:
    r = reader([chunk(2, 0), chunk(1, 5), chunk(2, 1), ResultMessage("t", 2, 2, "done")])
    got = await drain(r)
    assert [m.seq for m in got] == [0, 1, 2] and r.stale_dropped == 1


async def test_a_frozen_attempt_heard_first_is_dropped() -> None:
    # A worker woke after its task moved on to attempt 2, before attempt 2 said anything.
    r = reader([chunk(1, 0), chunk(1, 1), chunk(2, 0)], StoredOutcome(attempt=2))
    r.queue.put_nowait(ResultMessage("t", 2, 1, "done"))
    assert [(m.attempt, m.seq) for m in await drain(r)] == [(2, 0), (2, 1)]
    assert r.stale_dropped == 2


async def test_a_new_attempt_before_any_output_is_followed() -> None:
    r = reader([ResultMessage("t", 2, 0, "done", {"ok": 1})])
    assert (await drain(r))[0].data == {"ok": 1}


async def test_a_new_attempt_after_output_is_an_error() -> None:
    r = reader([chunk(1, 0), chunk(2, 0)])
    with pytest.raises(AttemptRestarted):
        await drain(r)


async def test_a_gap_is_detected() -> None:
    # Its own type: the gateway starts over a stream that lost a message before any output.
    with pytest.raises(MessageLost, match="lost a message"):
        await drain(reader([chunk(1, 0), chunk(1, 2)]))


async def test_silence_reads_the_stored_outcome() -> None:
    stored = StoredOutcome("done", ResultMessage("t", 1, 0, "done", {"x": 1}).encode())
    r = reader([], stored, poll_interval=0.01)
    assert (await drain(r))[0].data == {"x": 1}


async def test_resync_reads_the_stored_error() -> None:
    err = {"error": {"message": "boom", "type": None, "param": None, "code": "attempts_exhausted"}}
    stored = StoredOutcome("failed", ResultMessage("t", 2, -1, "error", err).encode())
    with pytest.raises(SllmError) as exc:
        await drain(reader([RESYNC], stored))
    assert exc.value.status == 502 and exc.value.message == "boom"


async def test_a_vanished_task_fails_instead_of_hanging() -> None:
    with pytest.raises(FatalError, match="lost"):
        await drain(reader([], StoredOutcome(state=None), poll_interval=0.01))


async def test_deadline() -> None:
    with pytest.raises(DeadlineExceeded):
        await drain(reader([], deadline=time.time() + 0.05, poll_interval=0.01))


def claimed_chunk(seq: int, claim: str) -> ResultMessage:
    return ResultMessage("t", 1, seq, "chunk", {"n": seq}, claim)


async def test_a_second_claim_of_one_attempt_is_told_apart_by_its_claim() -> None:
    """A failover lost attempt 1's stamp: the new primary gave attempt 1 out again, and
    both runs speak. Only the claim Redis holds is read; the other's output is dropped."""
    old, new = "1733500000.5", "1733500009.25"
    r = reader(
        [claimed_chunk(0, new), claimed_chunk(0, old), claimed_chunk(1, old),
         claimed_chunk(1, new), ResultMessage("t", 1, 2, "done", claim=new)],
        StoredOutcome(claimed=new),
    )  # fmt: skip
    got = await drain(r)
    assert [(m.seq, m.claim) for m in got] == [(0, new), (1, new), (2, new)]
    assert r.stale_dropped == 2


async def test_a_stream_read_from_the_lost_claim_breaks_rather_than_mixing_two_runs() -> None:
    old, new = "1733500000.5", "1733500009.25"
    r = reader([claimed_chunk(0, old), claimed_chunk(1, old), claimed_chunk(0, new)],
               StoredOutcome(claimed=new))  # fmt: skip
    got = []
    with pytest.raises(AttemptRestarted):
        async for m in r.messages():
            got.append(m)
    assert [(m.seq, m.claim) for m in got] == [(0, old), (1, old)]


def batch(seq: int, count: int, attempt: int = 1) -> ResultMessage:
    return ResultMessage("t", attempt, seq, "chunks", [{"n": seq + i} for i in range(count)])


async def test_a_batch_is_read_in_one_step_and_its_overlap_after_a_resync_dropped() -> None:
    done = ResultMessage("t", 1, 7, "done")
    r = reader([batch(0, 3), chunk(1, 3), batch(2, 3), batch(0, 2), batch(5, 2), done])
    got = await drain(r)
    assert [(m.seq, [c["n"] for c in m.chunks]) for m in got] == [
        (0, [0, 1, 2]),
        (3, [3]),
        (4, [4]),  # the part of 2-4 not read yet
        (5, [5, 6]),
        (7, []),
    ]


async def test_a_gap_before_a_batch_is_detected() -> None:
    with pytest.raises(MessageLost):
        await drain(reader([batch(0, 3), batch(4, 2)]))


async def test_how_far_the_client_read_is_noted_when_a_batch_passes_a_multiple() -> None:
    noted: list[tuple[int, int]] = []

    class Noting(StoredOutcome):
        async def ack(self, task_id: str, attempt: int, seq: int) -> None:
            noted.append((attempt, seq))

    done = ResultMessage("t", 1, ACK_EVERY + 1, "done")
    r = reader([batch(0, ACK_EVERY - 1), batch(ACK_EVERY - 1, 2), done], Noting())
    await drain(r)
    await asyncio.sleep(0)
    assert noted == [(1, ACK_EVERY + 1)]  # once, when the batch past the multiple was taken
