"""Redis clients: a fail-fast one for the request path, a patient one for loops."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

SOCKET_TIMEOUT = 5.0
# Connections per client, whatever the number of models and workers: no command blocks
# (claims do not wait in Redis), so a few dozen serve any load a single-threaded Redis
# takes; a burst beyond them waits for one, for up to SOCKET_TIMEOUT.
MAX_CONNECTIONS = 64


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
    pool = redis.BlockingConnectionPool.from_url(
        url,
        # Replies are str; redis-py types them bytes | str, hence the casts of the stores.
        decode_responses=True,
        socket_connect_timeout=connect_timeout,
        socket_timeout=SOCKET_TIMEOUT,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError],
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT,
    )
    return redis.Redis.from_pool(pool)
