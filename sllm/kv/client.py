"""Redis clients: a fail-fast one for the request path, a patient one for loops; of one
server, or of the primary that Redis Sentinel names (it follows a failover)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from sllm.kv.redis_url import is_sentinel, parse_sentinel

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
    options: dict[str, Any] = dict(
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
    if is_sentinel(url):
        return _sentinel_client(url, options)
    return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **options))


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool, bounded as the plain one is: a burst past MAX_CONNECTIONS waits
    for a connection instead of failing with "Too many connections"."""


class _SentinelRedis(redis.Redis):
    """A client of the Sentinel service's primary that also closes its sentinel clients."""

    manager: Sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.manager.aclose()


def _sentinel_client(url: str, options: dict[str, Any]) -> redis.Redis:
    target = parse_sentinel(url)
    sentinel = Sentinel(
        target.sentinels,
        # Asking the sentinels where the primary is fails over to the next sentinel
        # itself; its timeouts are the connection's.
        sentinel_kwargs={
            "socket_connect_timeout": options["socket_connect_timeout"],
            "socket_timeout": options["socket_timeout"],
            "password": target.sentinel_password,
            "decode_responses": True,
        },
    )
    client = sentinel.master_for(
        target.service,
        redis_class=_SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **options,
    )
    client.manager = sentinel
    return client
