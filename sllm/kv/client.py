"""Redis clients: a fail-fast one for the request path, a patient one for loops."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

# Blocking reads (BLMOVE) must time out below the socket timeout, or a healthy idle
# wait would read as a dead connection.
SOCKET_TIMEOUT = 5.0
BLOCK_TIMEOUT = 1.0


def connect(url: str, *, patient: bool) -> redis.Redis:
    """A client for ``url``.

    The fail-fast client answers within about a second when Redis is down, so the
    gateway can say 503; the patient one retries with capped exponential backoff, for
    background loops that should ride out a Redis restart.
    """
    if patient:
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=6)
        connect_timeout = 2.0
    else:
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=1)
        connect_timeout = 0.5
    return redis.Redis.from_url(
        url,
        # Replies are str; redis-py types them bytes | str, hence the casts of the stores.
        decode_responses=True,
        socket_connect_timeout=connect_timeout,
        socket_timeout=SOCKET_TIMEOUT,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError],
        health_check_interval=30,
        max_connections=512,
    )
