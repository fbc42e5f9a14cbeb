"""One request's timings and outcome as the gateway relays it, for its metrics and log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram

from sllm.edge.serving import log_fields

if TYPE_CHECKING:
    from sllm.head.recent import Recent
    from sllm.metrics import HeadMetrics

# The request lines keep the gateway's logger name, which operators filter on.
log = logging.getLogger("sllm.head.gateway")


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

    def ended(
        self, m: HeadMetrics, recent: Recent, task_id: str, attempt: int, outcome: str
    ) -> None:
        """The request ended: its metrics, the head's recent traffic and its log line."""
        seconds = time.perf_counter() - self.started
        ttft = self.first - self.started if self.first else None
        m.requests.labels(self.model, self.endpoint, outcome).inc()
        m.latency.labels(self.model, self.endpoint).observe(seconds)
        if ttft is not None:
            m.ttft.labels(self.model).observe(ttft)
        if self.generated():
            m.generated_tokens.labels(self.model).inc(self.generated())
        recent.request(
            time.time(),
            seconds,
            outcome == "ok",
            model=self.model,
            ttft=ttft,
            tokens=self.generated(),
        )
        log.info(
            "request",
            extra=log_fields(
                request_id=self.request_id,
                model=self.model,
                endpoint=self.endpoint,
                task=task_id,
                attempt=attempt,
                instance=self.instance,
                outcome=outcome,
                seconds=round(seconds, 4),
                ttft=round(ttft, 4) if ttft is not None else None,
                chunks=self.chunks,
            ),
        )
