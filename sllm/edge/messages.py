"""Result messages: what a worker (or a Lua script) sends a gateway about one task.

Every message carries the task id, the attempt that produced it, that attempt's claim
(the time its lease was stamped: a Redis failover that lost a stamp gives the same
attempt number out twice, and only the claim tells the two apart) and a sequence
number, so the gateway can drop a stale attempt's output and notice a gap. ``seq`` is -1 on
terminal errors raised outside the worker (attempts spent, model deleted). Chunks that
reach the worker together travel as one ``chunks`` message (``seq`` its first chunk's,
``data`` the list): a Redis message per token cost the head and the worker more than
anything else in a fast stream. The gateway's bus splits it back into chunks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sllm.edge import fast_json

# ``requeued``: the head that ran the attempt sent the task back to its queue (its
# instance failed); the gateway looks at the task at once instead of after a quiet spell.
Kind = Literal["chunk", "chunks", "done", "error", "requeued"]

# Flow control of a stream: the gateway notes every ACK_EVERY chunks its client read
# (``TaskStore.ack``); the worker publishing them waits when it is FLOW_WINDOW chunks
# ahead of that, and stops reading its backend, whose generation then pauses. Pub/sub
# has no backpressure of its own: a client that read nothing grew the head by 145 MB.
FLOW_WINDOW = 1024
# A window of 256 cost a fast stream a fifth of its speed: the worker ran into it while
# the head's queue was briefly behind, and each wait sleeps at least a poll.
ACK_EVERY = 128


# The header by which a dispatcher asks ``/invoke`` for its stream's messages in the
# answer (worker/direct_lines.py): an older worker ignores it and publishes, an older
# dispatcher does not send it.
DIRECT_HEADER = "x-sllm-direct"


@dataclass(frozen=True)
class ResultMessage:
    task: str
    attempt: int
    seq: int
    kind: Kind
    data: Any = None
    claim: str = ""  # "" in messages of the head's own scripts (attempts spent...)

    @property
    def terminal(self) -> bool:
        return self.kind not in ("chunk", "chunks", "requeued")

    @property
    def chunks(self) -> list[Any]:
        """The chunks a ``chunk`` or ``chunks`` message carries, in order (the first's
        number is ``seq``); none for any other."""
        if self.kind == "chunks":
            return self.data  # type: ignore[no-any-return]
        return [self.data] if self.kind == "chunk" else []

    def from_seq(self, seq: int) -> ResultMessage:
        """A chunks message less its chunks before ``seq`` (read already)."""
        rest = self.chunks[seq - self.seq :]
        return ResultMessage(self.task, self.attempt, seq, "chunks", rest, self.claim)

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> ResultMessage:
        obj = fast_json.loads(raw)
        return cls(
            task=str(obj["task"]),
            attempt=int(obj["attempt"]),
            seq=int(obj["seq"]),
            kind=obj["kind"],
            data=obj.get("data"),
            claim=str(obj.get("claim") or ""),
        )


def encode_raw(
    task: str, attempt: int, seq: int, kind: Kind, raw_json: str, claim: str = ""
) -> str:
    """Encode a message whose data is already JSON text (a backend's chunk), unparsed."""
    fields = {"task": task, "attempt": attempt, "seq": seq, "kind": kind, "claim": claim}
    head = json.dumps(fields)
    return f'{head[:-1]}, "data": {raw_json}}}'


def encode_chunks(task: str, attempt: int, seq: int, chunks: list[str], claim: str = "") -> str:
    """Chunks ``seq`` onwards (JSON texts, unparsed) as one message; one chunk goes as
    a plain ``chunk``."""
    if len(chunks) == 1:
        return encode_raw(task, attempt, seq, "chunk", chunks[0], claim)
    return encode_raw(task, attempt, seq, "chunks", f"[{','.join(chunks)}]", claim)
