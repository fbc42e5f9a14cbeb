"""Per-client token buckets (requests and tokens per minute), shared by every head."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis

from sllm.kv.keys import Keys
from sllm.kv.scripts import Scripts


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    # When refused: milliseconds until the bucket that refused holds enough, and which
    # bucket it was ("requests" or "tokens").
    wait_ms: int = 0
    limit: str = ""


class RateLimits:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self._k = keys
        self._s = scripts or Scripts(client)

    async def charge(
        self, client_id: str, rpm: int, tpm: int, tokens: int, now: float
    ) -> RateDecision:
        """Take one request and ``tokens`` from ``client_id``'s buckets, both or neither.
        ``now`` is in seconds; a limit of 0 is unlimited."""
        if rpm <= 0 and tpm <= 0:
            return RateDecision(True)
        allowed, wait_ms, limit = await self._s.rate_limit(
            keys=[self._k.rate_limit(client_id)],
            args=[int(now * 1000), rpm, tpm, max(0, tokens)],
        )
        return RateDecision(bool(int(allowed)), int(wait_ms), str(limit))
