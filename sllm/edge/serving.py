"""How every sllm process logs and serves its FastAPI app: one format, one shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request

from sllm.config import HttpEdgeSettings, LogFormat
from sllm.edge.http_limits import HttpLimits, limited_protocol
from sllm.edge.turn_writes import TurnWritesProtocol

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Idle connections a backend server keeps: longer than its worker's client keeps them
# (60 s). With uvicorn's 5 s, a call sent as the backend closed its idle connection
# failed ("Can not write request body") and was retried as if the backend had crashed.
BACKEND_KEEP_ALIVE = 75
# Bytes a socket on the worker <-> backend hop may hold each way (the kernel doubles
# it). Loopback buffers otherwise grow to megabytes (tcp_rmem goes to 32 MB here): a
# backend would generate tens of thousands of tokens for a client that reads nothing
# before its writes blocked. Small, a few thousand chunks fill them.
HOP_BUFFER = 256 * 1024
# Seconds the requests in flight get after SIGTERM before the lifespan ends (a worker
# sets its own: SLLM_DRAIN_TIMEOUT).
GRACEFUL_SHUTDOWN = 10.0


def log_fields(**fields: Any) -> dict[str, Any]:
    """``extra=`` of a structured log line: the fields go out as JSON keys, or as
    ``key=value`` after the message in text."""
    return {"fields": fields}


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """One format for every logger of the process, uvicorn's included (``serve`` hands
    it no config of its own)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _options(
    host: str, port: int, log_level: str, access_log: bool | Literal["failures"]
) -> dict[str, Any]:
    if access_log == "failures":
        logging.getLogger("uvicorn.access").addFilter(_failures_only)
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": bool(access_log),
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        "timeout_keep_alive": BACKEND_KEEP_ALIVE,
        # The format setup_logging chose applies to uvicorn's loggers too.
        "log_config": None,
    }


def _failures_only(record: logging.LogRecord) -> bool:
    """uvicorn's access line of a response with status 400 or above (its arguments:
    client, method, path, HTTP version, status)."""
    args = record.args
    if not (isinstance(args, tuple) and len(args) == 5 and isinstance(args[4], int)):
        return True  # not an access line: kept
    return args[4] >= 400


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes bind too: the kernel spreads the
    connections among them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def serve(
    app: FastAPI,
    host: str,
    port: int,
    log_level: str,
    *,
    access_log: bool | Literal["failures"] = True,
    edge: HttpEdgeSettings | None = None,
    shared_port: bool = False,
    graceful: float = GRACEFUL_SHUTDOWN,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``graceful`` seconds to
    finish, then the app's lifespan stops what it owns. ``access_log``: a line per
    response, or only per response that failed (``"failures"``). ``edge``: the limits a server
    that faces the network puts on its clients (the head, a worker; a backend serves its
    worker only). ``shared_port``: other processes serve the same port (SO_REUSEPORT)."""
    options = _options(host, port, log_level, access_log)
    options["timeout_graceful_shutdown"] = graceful
    if edge is not None:
        limits = HttpLimits(
            edge.max_header_bytes, edge.max_headers, edge.header_timeout, edge.keep_alive_timeout
        )
        options["http"] = limited_protocol(limits)
        options["timeout_keep_alive"] = edge.keep_alive_timeout
    else:
        options["http"] = TurnWritesProtocol
    config = uvicorn.Config(app, **options)
    sock = _shared_socket(host, port) if shared_port else config.bind_socket()
    if edge is None:
        # A backend: what its connections send goes to its worker (accepted sockets
        # inherit the listening socket's buffer size).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HOP_BUFFER)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the app failed to start


async def port_state(host: str, port: int, timeout: float) -> Literal["open", "refused", "unknown"]:
    """Whether a TCP port accepts connections ("open"), refuses them (nothing listens:
    a dead process on a live host), or could not be told in ``timeout``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return "refused"
    except (OSError, TimeoutError):
        return "unknown"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "open"


async def refuses_connections(url: str, tries: int = 3) -> bool:
    """Whether nothing listens at ``url`` any more (bounded: about 1 s). Tried a few
    times 0.1 s apart: a process being killed closes its connections a moment before
    its listening socket, and a listening socket torn down under a connect resets it
    ("unknown", as a host that does not answer) before it refuses the next."""
    parts = urlsplit(url)
    for attempt in range(tries):
        if attempt:
            await asyncio.sleep(0.1)
        if await port_state(parts.hostname or "", parts.port or 80, 0.25) == "refused":
            return True
    return False


def hop_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's ``socket_factory`` for the worker's calls to its backends."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HOP_BUFFER)
    return sock


def prime_serving(app: FastAPI) -> None:
    """What ``serve`` imports before it listens (uvicorn's HTTP, WebSocket and lifespan
    protocols: 18 ms on the 2-core VM), done now: a warm process does it before it is
    asked for an instance."""
    uvicorn.Config(app, **_options("127.0.0.1", 0, "warning", False)).load()


async def hung_up(request: Request) -> None:
    """Returns once the client of ``request`` has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client went away before its response began."""


async def unless_gone(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """What ``work`` returns (or raises); ClientGone, ``work`` being cancelled, when the
    client goes away first."""
    doing = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(hung_up(request))
    try:
        await asyncio.wait({doing, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not doing.done():
            doing.cancel()
    if doing.cancelled() or not doing.done():
        raise ClientGone
    return doing.result()
