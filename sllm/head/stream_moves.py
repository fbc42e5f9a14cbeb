"""Moving a live stream to another instance on purpose (live migration), the gateway's
side; what to move where is ``migration``'s.

A ``migrate`` control event names a task, its destination and why. The gateway that
relays that task's stream moves it by its text: where the destination's backend keeps
prefixes, it first prefills the prompt plus the text relayed so far while the source
goes on (``sllm_prefill``: one token, discarded), in rounds until it is close behind;
then, at the next chunk boundary, the continuation (``sllm_continue_from``, as a resume
sends) is queued on the destination and only then is the source's task cancelled, so a
destination that fails leaves the request where it was. The client sees one stream:
chunks of the continuation carry the first attempt's id (``Relay``). A migration never
costs an attempt (the continuation is a new task) nor counts as a resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from sllm.edge.errors import SllmError
from sllm.head.migration import another_round
from sllm.head.results import Pending
from sllm.head.stream_resume import PREFILL_FIELD, Relay, continuation
from sllm.head.watch import Watch
from sllm.kv import RedisError
from sllm.kv.bus import ResultBus
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

# A warm-up round that takes longer than this: the destination is not fit to take over.
WARM_TIMEOUT = 30.0
# Migrations this gateway keeps for the dashboard, the latest last.
RECENT = 50


class Gateway(Protocol):
    """What a move needs of the gateway (``sllm.head.gateway``)."""

    metrics: HeadMetrics
    bus: ResultBus
    moves: StreamMoves

    async def submit(
        self,
        endpoint: str,
        model: str,
        body: dict[str, Any],
        request_id: str,
        deadline: float,
        watch: Watch,
        to: str | None = None,
        pinned: bool = False,
    ) -> Pending: ...

    async def final(self, pending: Pending) -> dict[str, Any]: ...

    def cancel(self, pending: Pending) -> None: ...


@dataclass
class Move:
    """A move asked of one stream."""

    to: str
    reason: str
    # Whether the destination prefills ahead (its backend keeps prefixes).
    warm: bool
    asked: float
    job: asyncio.Task[bool] | None = None
    rounds: int = 0


class StreamMoves:
    """The streams this gateway relays, by their current task, and the moves asked of
    them."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._streams: dict[str, Move | None] = {}
        # Continuations of moved streams -> when the source's last chunk was relayed,
        # and the migration's entry in ``recent`` (its gap is filled in then).
        self._cut_at: dict[str, tuple[float, dict[str, Any]]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    def open(self, task_id: str) -> None:
        self._streams.setdefault(task_id, None)

    def close(self, task_id: str, model: str, outcome: str = "ended") -> None:
        """The stream of ``task_id`` ended, or went on as another task after its source
        failed (``outcome`` source_failed: the resume took over)."""
        move = self._streams.pop(task_id, None)
        self._cut_at.pop(task_id, None)
        if move is not None:
            if move.job is not None:
                move.job.cancel()
            self._count(task_id, model, move, outcome)

    async def on_control(self, event: dict[str, Any]) -> None:
        if event.get("type") != "migrate":
            return
        task, to = event.get("task"), event.get("to")
        if not isinstance(task, str) or not isinstance(to, str) or task not in self._streams:
            return  # another head's stream, or one that ended
        if self._streams[task] is None:  # one move at a time; a repeated ask is the same
            reason = str(event.get("reason") or "operator")
            self._streams[task] = Move(to, reason, bool(event.get("warm")), time.monotonic())

    async def step(self, pending: Pending, relay: Relay, movable: bool) -> Pending | None:
        """After each relayed chunk: the stream's new task when it moved now, else None
        (no move asked, the destination still warming up, or the move given up)."""
        task = pending.task
        cut = self._cut_at.pop(task.id, None)
        if cut is not None:
            gap = pending.watch.last - cut[0]
            cut[1]["gap"] = round(gap, 4)
            self._gateway.metrics.migration_gap.labels(task.model).observe(gap)
        move = self._streams.get(task.id)
        if move is None:
            return None
        if not movable or move.to == pending.watch.instance:
            self._give_up(task.id, task.model, move, "not_movable")
            return None
        if move.warm and move.job is None:
            move.job = asyncio.create_task(self._warm(pending, relay, move))
            return None
        if move.job is not None:
            if not move.job.done():
                return None
            failed = move.job.cancelled() or move.job.exception() is not None
            if failed or not move.job.result():
                if not move.job.cancelled() and move.job.exception() is not None:
                    log.error("task %s: warm-up failed", task.id, exc_info=move.job.exception())
                self._give_up(task.id, task.model, move, "destination_failed")
                return None
        return await self._cut(pending, relay, move)

    async def _warm(self, pending: Pending, relay: Relay, move: Move) -> bool:
        """Warm-up rounds on the destination; whether it is ready to take over."""
        gateway, task = self._gateway, pending.task
        while True:
            relayed = relay.chunks
            body = {
                **continuation(task.body, relay.text),
                "stream": False,
                "max_tokens": 1,
                PREFILL_FIELD: True,
            }
            for unused in ("max_completion_tokens", "stream_options"):
                body.pop(unused, None)
            watch = Watch(pending.request_id, task.model, task.endpoint)
            try:
                probe = await gateway.submit(
                    task.endpoint,
                    task.model,
                    body,
                    pending.request_id,
                    task.deadline,
                    watch,
                    to=move.to,
                    pinned=True,
                )
            except (SllmError, RedisError) as exc:
                log.info("task %s: no warm-up on %s: %s", task.id, move.to, exc)
                return False
            try:
                async with asyncio.timeout(WARM_TIMEOUT):
                    await gateway.final(probe)
            except (SllmError, TimeoutError) as exc:
                gateway.cancel(probe)
                log.info("task %s: warm-up on %s failed: %s", task.id, move.to, exc)
                return False
            except asyncio.CancelledError:  # the stream ended meanwhile
                gateway.cancel(probe)
                raise
            finally:
                gateway.bus.forget(probe.task.id)
            move.rounds += 1
            if not another_round(relay.chunks - relayed, move.rounds):
                return True

    async def _cut(self, pending: Pending, relay: Relay, move: Move) -> Pending | None:
        """The continuation queued on the destination, then the source's task
        cancelled; None (the stream stays) when the continuation cannot be queued."""
        gateway, task = self._gateway, pending.task
        source = pending.watch.instance
        try:
            moved = await gateway.submit(
                task.endpoint,
                task.model,
                continuation(task.body, relay.text),
                pending.request_id,
                task.deadline,
                pending.watch,
                to=move.to,
            )
        except (SllmError, RedisError) as exc:
            log.warning("task %s: could not move to %s: %s", task.id, move.to, exc)
            self._give_up(task.id, task.model, move, "destination_failed")
            return None
        gateway.cancel(pending)
        gateway.bus.forget(task.id)
        relay.moves += 1
        del self._streams[task.id]
        self._streams[moved.task.id] = None
        entry = self._count(task.id, task.model, move, "moved", source)
        self._cut_at[moved.task.id] = (pending.watch.last, entry)
        gateway.metrics.migration_rounds.labels(task.model).inc(move.rounds)
        log.info(
            "task %s moved from %s to %s as task %s (%s) after %d chunk(s), %d warm-up "
            "round(s) in %.3f s",
            task.id,
            source or "its instance",
            move.to,
            moved.task.id,
            move.reason,
            relay.chunks,
            move.rounds,
            time.monotonic() - move.asked,
        )
        return moved

    def answer_moved(self, task_id: str, model: str, source: str, to: str, reason: str) -> None:
        """A non-streamed answer went on elsewhere (``answer_moves``): counted and
        listed as a stream's move is, without rounds or a gap."""
        self._count(task_id, model, Move(to, reason, False, time.monotonic()), "moved", source)

    def _give_up(self, task_id: str, model: str, move: Move, outcome: str) -> None:
        if move.job is not None:
            move.job.cancel()
        # The stream stays; a later ask may move it.
        self._streams[task_id] = None
        self._count(task_id, model, move, outcome)

    def _count(
        self, task_id: str, model: str, move: Move, outcome: str, source: str = ""
    ) -> dict[str, Any]:
        self._gateway.metrics.migrations.labels(model, move.reason, outcome).inc()
        entry: dict[str, Any] = {
            "at": time.time(),
            "model": model,
            "task": task_id,
            "from": source,
            "to": move.to,
            "reason": move.reason,
            "outcome": outcome,
            "rounds": move.rounds,
            "gap": None,
        }
        self.recent.append(entry)
        return entry
