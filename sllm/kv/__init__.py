"""Everything that talks to Redis. Nothing outside this package imports redis."""

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisConnectionError", "RedisError", "RedisTimeoutError"]
