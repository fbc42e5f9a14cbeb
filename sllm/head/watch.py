"""One request's timings and outcome as the gateway relays it, for its metrics and log."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram


@dataclass
class Watch:
    """One request's timings and outcome, for its metrics and its log line."""

    request_id: str
    model: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    first: float = 0.0
    last: float = 0.0
    chunks: int = 0
    instance: str = ""
    attempt: int = 0
    # Tokens generated: the usage's count where the response has one, else one per
    # relayed chunk with choices (a token each from every backend sllm runs).
    tokens: int = 0
    usage_tokens: int | None = None
    # Its client read nothing for stream_stall_timeout seconds: the request was ended.
    stalled: bool = False

    def chunk(self, data: dict[str, Any], itl: Histogram | None) -> None:
        now = time.perf_counter()
        if not self.first:
            self.first = now
        elif itl is not None:
            itl.observe(now - self.last)
        self.last = now
        self.chunks += 1
        if data.get("choices"):
            self.tokens += 1
        self.usage(data)
        self.instance = str(data.get("system_fingerprint") or self.instance)

    def usage(self, data: dict[str, Any]) -> None:
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]

    def generated(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.tokens
