"""Result messages: what a worker (or a Lua script) sends a gateway about one task.

Every message carries the task id, the attempt that produced it and a sequence number,
so the gateway can drop a stale attempt's output and notice a gap. ``seq`` is -1 on
terminal errors raised outside the worker (attempts spent, model deleted).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["chunk", "done", "error"]

# Flow control of a stream: the gateway notes every ACK_EVERY chunks its client read
# (``TaskStore.ack``); the worker publishing them waits when it is FLOW_WINDOW chunks
# ahead of that, and stops reading its backend, whose generation then pauses. Pub/sub
# has no backpressure of its own: a client that read nothing grew the head by 145 MB.
FLOW_WINDOW = 1024
# A window of 256 cost a fast stream a fifth of its speed: the worker ran into it while
# the head's queue was briefly behind, and each wait sleeps at least a poll.
ACK_EVERY = 128


@dataclass(frozen=True)
class ResultMessage:
    task: str
    attempt: int
    seq: int
    kind: Kind
    data: Any = None

    @property
    def terminal(self) -> bool:
        return self.kind != "chunk"

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> ResultMessage:
        obj = json.loads(raw)
        return cls(
            task=str(obj["task"]),
            attempt=int(obj["attempt"]),
            seq=int(obj["seq"]),
            kind=obj["kind"],
            data=obj.get("data"),
        )


def encode_raw(task: str, attempt: int, seq: int, kind: Kind, raw_json: str) -> str:
    """Encode a message whose data is already JSON text (a backend's chunk), unparsed."""
    head = json.dumps({"task": task, "attempt": attempt, "seq": seq, "kind": kind})
    return f'{head[:-1]}, "data": {raw_json}}}'
