"""What a head knows of a model's instances, for its dispatcher's picks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sllm.head.scaling import InstanceLoad
from sllm.kv.records import InstanceRecord

# How long a routing view of a model's instances is trusted between claims.
VIEW_TTL = 0.05


@dataclass
class ModelView:
    """What this head knows of a model's instances, shared by its claim loop and the
    gateway's offers; fetched from Redis at most every VIEW_TTL, and kept counting this
    head's own starts and ends in between."""

    loads: list[InstanceLoad] = field(default_factory=list)
    records: dict[str, InstanceRecord] = field(default_factory=dict)
    fetched: float = 0.0  # monotonic; 0: refetch before the next pick
    refresh: asyncio.Task[None] | None = None

    def stale(self) -> bool:
        return time.monotonic() - self.fetched > VIEW_TTL

    def count(self, instance_id: str, delta: int, now: float | None = None) -> None:
        self.loads = [
            InstanceLoad(
                v.id,
                v.state,
                max(0, v.outstanding + delta),
                v.last_active if now is None else now,
            )
            if v.id == instance_id
            else v
            for v in self.loads
        ]
