"""Where Redis is: one server (``redis://``, ``rediss://``, ``unix://``) or a service that
Redis Sentinel fails over (``redis+sentinel://``, ``rediss+sentinel://``).

A Sentinel URL names every sentinel, the service and the database::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...]

The password (and user) are the Redis servers'; the sentinels get ``sentinel_password``
when they have one of their own. Parsed when settings are read, so a bad URL is a
settings error rather than a failure at the first command.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379
# What a head hands its workers and the settings accept; one pattern for both.
URL_PATTERN = r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://"


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEMES)


def check_redis_url(url: str) -> str:
    """``url`` when it is one sllm can connect to; ValueError saying why not."""
    if is_sentinel(url):
        parse_sentinel(url)
    elif not url.startswith(PLAIN_SCHEMES):
        raise ValueError(
            f"a Redis URL starts with one of {', '.join(PLAIN_SCHEMES + SENTINEL_SCHEMES)}"
        )
    return url


def parse_sentinel(url: str) -> SentinelTarget:
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = tuple(_host_port(part) for part in hosts.split(","))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"{redacted(url)}: a Sentinel URL names its service: .../service[/db]")
    if len(parts) > 2:
        raise ValueError(f"{redacted(url)}: after the hosts come the service and the db only")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"{redacted(url)}: the database is a number, not {parts[1]!r}")
        db = int(parts[1])
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"{redacted(url)}: unknown option(s) {', '.join(sorted(unknown))}")
    sentinel_password = options.get("sentinel_password", [None])[-1]
    return SentinelTarget(
        sentinels=sentinels,
        service=parts[0],
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password or None,
        ssl=scheme == "rediss+sentinel",
    )


def _host_port(part: str) -> tuple[str, int]:
    if part.startswith("["):  # an IPv6 address
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    if not host:
        raise ValueError(f"a sentinel's address is empty in {part!r}")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a sentinel's port is a number from 1 to 65535, not {port!r}")
    return host, int(port)


def redacted(url: str) -> str:
    """``url`` without its credentials, fit for an error message or a log."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    _, at, hosts = netloc.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{hosts}{slash}{tail.partition('?')[0]}"
