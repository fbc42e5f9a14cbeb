"""Reading one task's results in order, whatever happens to pub/sub on the way.

The gateway listens on its result channel before it enqueues; this reader drops
messages of an older attempt, checks sequence numbers, and reads the outcome stored in
the task hash whenever the channel goes quiet, reconnects or skips a message, so a lost
message never hangs a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sllm.edge.errors import DeadlineExceeded, FatalError, ServiceUnavailable, error_from_body
from sllm.edge.messages import ACK_EVERY, ResultMessage
from sllm.head.watch import Watch
from sllm.kv import RedisError
from sllm.kv.bus import RESYNC, Delivery
from sllm.kv.tasks import NewTask, TaskStore

log = logging.getLogger(__name__)

# How long a quiet task waits before its stored outcome is read.
POLL_INTERVAL = 2.0


class AttemptRestarted(FatalError):
    """A newer attempt began after this one had already sent output to the client."""

    code = "stream_interrupted"


class MessageLost(FatalError):
    """Pub/sub dropped a chunk of this task (its subscription was cut): what came
    before the gap is all the gateway knows of the output."""

    code = "stream_interrupted"


class TaskLost(MessageLost):
    """Redis no longer has this task: the replica that a failover promoted never saw it
    (replication is asynchronous), or its data was flushed. Nothing of it can arrive;
    the gateway queues the request again."""

    code = "task_lost"


@dataclass
class TaskResults:
    task_id: str
    queue: asyncio.Queue[Delivery]
    tasks: TaskStore
    deadline: float
    poll_interval: float = POLL_INTERVAL
    attempt: int = 0
    next_seq: int = 0
    stale_dropped: int = 0
    _pending_terminal: ResultMessage | None = field(default=None, repr=False)
    # The newest attempt Redis has shown this reader (read when a new attempt speaks).
    _current: int = field(default=0, repr=False)
    # The claim (stamp time) of the attempt being read: the same attempt number is
    # stamped twice when a Redis failover lost the first stamp.
    claim: str = ""
    # Notes of how far the client read: the one being written, and the last written.
    _acking: asyncio.Task[None] | None = field(default=None, repr=False)
    _noted: tuple[int, int] = field(default=(0, 0), repr=False)

    async def messages(self) -> AsyncIterator[ResultMessage]:
        """Chunks of the current attempt in order (a batch that came as one message as
        one ``chunks`` message), then its terminal message.

        Raises the client-facing error for an error outcome, DeadlineExceeded when the
        deadline passes, and AttemptRestarted when a new attempt begins after chunks of an
        older one were already yielded.
        """
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceeded("the request did not finish before its deadline")
            if not self.queue.empty():
                # Messages delivered together: no wait to time.
                item = self.queue.get_nowait()
            else:
                try:
                    # A timeout, not wait_for: that made a task for every message.
                    async with asyncio.timeout(min(remaining, self.poll_interval)):
                        item = await self.queue.get()
                except TimeoutError:
                    item = RESYNC
            if item == RESYNC or (isinstance(item, ResultMessage) and item.kind == "requeued"):
                message = await self._stored_terminal()
                if message is None:
                    continue
            else:
                assert isinstance(item, ResultMessage)
                message = item
            if message.attempt < self.attempt or await self._superseded(message):
                self._drop_stale(message)
                continue
            if message.attempt > self.attempt:
                if self.next_seq > 0:
                    raise AttemptRestarted(
                        "the instance serving this stream failed after output was sent"
                    )
                self.attempt = message.attempt
                self.claim = message.claim
            elif message.claim and message.claim != self.claim:
                if not self.claim:
                    self.claim = message.claim
                elif not await self._holds_claim(message):
                    self._drop_stale(message)
                    continue
                else:
                    if self.next_seq > 0:
                        raise AttemptRestarted(
                            "this stream's attempt was given out again after a Redis failover"
                        )
                    self.claim = message.claim
            if message.kind in ("chunk", "chunks"):
                count = len(message.chunks)
                if message.seq + count <= self.next_seq:
                    continue  # a duplicate delivered after a resync
                if message.seq > self.next_seq:
                    raise MessageLost("the result stream lost a message")
                if message.seq < self.next_seq:  # partly read already
                    message = message.from_seq(self.next_seq)
                before, self.next_seq = self.next_seq, message.seq + len(message.chunks)
                yield message
                # Resumed: the consumer (the client, through the response's send) has
                # taken these chunks and asks for more.
                if self.next_seq // ACK_EVERY != before // ACK_EVERY:
                    self._ack()
                continue
            if message.kind == "error":
                raise error_from_body(message.data or {})
            if message.seq not in (-1, self.next_seq):
                # Chunks still in flight may follow a terminal read from the hash; give
                # them one more quiet period before calling the stream broken.
                if self._pending_terminal is None:
                    self._pending_terminal = message
                    continue
                raise MessageLost("the result stream lost a message")
            yield message
            return

    async def _superseded(self, message: ResultMessage) -> bool:
        """Whether a newer attempt has begun than the one ``message`` comes from.

        A chunk of an attempt this reader has not heard from yet may come from a worker
        that froze past its lease and woke after the task was given to another instance,
        before that instance said anything; only the task hash knows. Read once per new
        attempt (terminal messages are stored only for the current attempt).
        """
        if message.attempt <= self.attempt or message.kind not in ("chunk", "chunks"):
            return False
        if message.attempt < self._current:
            return True
        try:
            current = await self.tasks.attempt(self.task_id)
        except RedisError as exc:
            raise _store_down(exc) from exc
        self._current = current if current is not None else message.attempt
        return message.attempt < self._current

    async def _holds_claim(self, message: ResultMessage) -> bool:
        """Whether ``message``'s claim is the one Redis holds for its attempt, when two
        claims of one attempt number speak (the first one's stamp lost in a failover)."""
        try:
            return await self.tasks.claimed(self.task_id) == message.claim
        except RedisError as exc:
            raise _store_down(exc) from exc

    def _ack(self) -> None:
        """Tell the worker how far the client read, in the background: a slow note only
        holds the worker back (flow control), never this stream."""
        if self._acking is None or self._acking.done():
            self._acking = asyncio.create_task(self._note())

    async def _note(self) -> None:
        # Again while the count ran ACK_EVERY past the note just written: a count that
        # came meanwhile must not be lost, or a worker a window ahead would wait for it.
        while self._noted[0] != self.attempt or self.next_seq - self._noted[1] >= ACK_EVERY:
            noted = (self.attempt, self.next_seq)
            try:
                await self.tasks.ack(self.task_id, *noted)
            except RedisError as exc:
                log.debug("task %s: could not note %s chunks read: %s", self.task_id, noted, exc)
                return
            self._noted = noted

    def _drop_stale(self, message: ResultMessage) -> None:
        self.stale_dropped += 1
        # One line per dropped message: fault tests count them in the head's log.
        log.info(
            "task %s: dropped a stale message of attempt %d (%s seq %d); now on attempt %d",
            self.task_id,
            message.attempt,
            message.kind,
            message.seq,
            max(self.attempt, self._current),
        )

    async def _stored_terminal(self) -> ResultMessage | None:
        if self._pending_terminal is not None:
            message, self._pending_terminal = self._pending_terminal, None
            if message.seq != self.next_seq:
                raise MessageLost("the result stream lost a message")
            return message
        try:
            state, result = await self.tasks.state_and_result(self.task_id)
        except RedisError as exc:
            raise _store_down(exc) from exc
        if result:
            return ResultMessage.decode(result)
        if state is None:
            raise TaskLost("the cluster's state store lost this request (a Redis failover?)")
        if state == "cancelled":
            raise FatalError("the task was cancelled", code="cancelled")
        if state == "queued" and self.next_seq > 0:
            # Sent back to the queue after its output began (its instance failed): the
            # retry would start over, so the stream goes on elsewhere from what it sent.
            raise AttemptRestarted("the instance serving this stream failed after output was sent")
        return None


def _store_down(exc: RedisError) -> ServiceUnavailable:
    # A client-facing error, so that a stream ends with an error event, not a cut
    # connection, when Redis goes away under it.
    return ServiceUnavailable(f"the cluster's state store is unavailable: {exc}")


@dataclass
class Pending:
    """A request's task in flight, as the gateway follows it."""

    task: NewTask
    results: TaskResults
    request_id: str
    watch: Watch
