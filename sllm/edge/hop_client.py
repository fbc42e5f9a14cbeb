"""HTTP/1.1 for a request's hops inside the cluster: the dispatcher's call to a worker
(``/invoke``) and the worker's call to its backend.

aiohttp's client cost about 100 us of CPU per call on the 2-core VM (URL handling,
timer and tracing objects, a header multidict per message, its stream reader); a
kept-alive connection that parses with httptools (uvicorn's parser) and hands the body
over as it arrives costs about 15. These hops need only this: one POST, a status, a
body read whole, as it comes or by lines, kept-alive connections, a deadline or a limit
on silence; the calls off the request path stay on aiohttp.

A connection is reused only once its previous answer was read to its end; an answer
left unread (its reader failed or was cancelled) closes its connection. What a
connection holds unread is bounded (``BUFFER``): past it, reading from the socket
pauses until the reader catches up.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import httptools

Key = tuple[str, int, bool]  # host, port, TLS

# Bytes of an answer held unread before the connection stops reading from its socket.
BUFFER = 1 << 20


class HopError(Exception):
    """The call failed before its answer ended."""


class HopConnectError(HopError):
    """No connection: refused, or the host unreachable."""


class HopConnectTimeout(HopError):
    """No connection within the connect timeout."""


class HopDisconnected(HopError):
    """The connection closed before the answer ended."""


class HopSilent(HopError):
    """Nothing came on the connection for ``silence`` seconds."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: HopClient, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.response: HopResponse | None = None
        self._parser = httptools.HttpResponseParser(self)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.close()  # bytes nobody asked for: the connection is not in a known state
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response.fail(HopError(f"garbled answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.response is not None:
            self.response.fail(HopDisconnected(f"the connection closed mid-answer: {exc!r}"))

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response.headers_done(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response.end(reusable=self._parser.should_keep_alive())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HopResponse:
    """An answer as it arrives: read it whole (``read``, ``text``), as it comes
    (``iter_any``) or by lines (``readline``) inside ``async with``; leaving the block
    releases the connection."""

    def __init__(self, conn: _Connection, deadline: float | None, silence: float | None):
        self.status = 0  # its headers are not kept: no caller reads them
        self._conn = conn
        self._deadline = deadline
        self._silence = silence
        self._pieces: deque[bytes] = deque()
        self._held = 0
        self._lines: deque[bytes] = deque()  # lines ``readline`` has split, not returned
        self._line: list[bytes] = []  # the start of a line not ended yet
        self._line_size = 0
        self._ended = False
        self._reusable = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- fed by the connection
    def headers_done(self, status: int) -> None:
        self.status = status
        self._wake()

    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._held += len(data)
        if self._held > BUFFER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def end(self, *, reusable: bool) -> None:
        self._ended = True
        self._reusable = reusable
        self._wake()

    def fail(self, exc: Exception) -> None:
        if not self._ended and self._error is None:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the connection brings something: TimeoutError past the deadline,
        HopSilent past ``silence`` seconds of nothing."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        when, silent = self._deadline, False
        if self._silence is not None:
            quiet_until = loop.time() + self._silence
            if when is None or quiet_until < when:
                when, silent = quiet_until, True
        self._waiter = loop.create_future()
        try:
            async with asyncio.timeout_at(when):
                await self._waiter
        except TimeoutError:
            if silent:
                raise HopSilent(f"nothing came for {self._silence:g} s") from None
            raise
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def _headers(self) -> None:
        while not self.status:
            await self._wait()

    # -- read by the caller
    def _take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        self._held = 0
        if self._paused and self._conn.transport is not None:
            self._paused = False
            self._conn.transport.resume_reading()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: all that came since the last piece, joined."""
        while True:
            if self._pieces:
                yield self._take()
            elif self._ended:
                return
            else:
                await self._wait()

    async def readline(self, max_size: int) -> bytes:
        """The next line, ``\\n`` included (the last one may lack it; b"" at the end);
        HopError for a line longer than ``max_size``."""
        while not self._lines:
            if self._pieces:
                *ended, rest = self._take().split(b"\n")
                if ended:
                    ended[0] = b"".join(self._line) + ended[0]
                    self._lines.extend(line + b"\n" for line in ended)
                    self._line, self._line_size = [], 0
                if rest:
                    self._line.append(rest)
                    self._line_size += len(rest)
                if self._line_size > max_size or any(len(x) > max_size for x in ended):
                    raise HopError(f"a line longer than {max_size} bytes")
            elif self._ended:
                last, self._line, self._line_size = b"".join(self._line), [], 0
                return last
            else:
                await self._wait()
        return self._lines.popleft()

    async def read(self) -> bytes:
        parts = [piece async for piece in self.iter_any()]
        return b"".join(parts)

    async def text(self) -> str:
        return (await self.read()).decode("utf-8", "replace")

    async def __aenter__(self) -> HopResponse:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.response = None
        unread = self._pieces or self._lines or self._line
        if self._ended and self._reusable and not self._conn.closed and not unread:
            self._conn.pool.release(self._conn)
        else:  # an answer left unread: what comes next on it is not a new answer
            self._conn.close()


class HopClient:
    """Kept-alive HTTP/1.1 connections to the hosts a process calls on its requests'
    path. ``idle_seconds``: how long an unused connection is kept (shorter than the
    server keeps it, so none is used as the server closes it); ``headers``: sent on
    every call."""

    def __init__(
        self,
        idle_seconds: float,
        socket_factory: Callable[[tuple[Any, ...]], socket.socket] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.idle_seconds = idle_seconds
        self._socket_factory = socket_factory
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[Key, list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        total: float | None,
        connect_timeout: float,
        silence: float | None = None,
        tls: bool = False,
    ) -> HopResponse:
        """Send a POST and return its answer once its status and headers came (read
        its body inside ``async with``). TimeoutError once ``total`` seconds passed
        (connecting included); HopSilent when nothing came for ``silence`` seconds;
        HopError when the connection failed."""
        loop = asyncio.get_running_loop()
        deadline = None if total is None else loop.time() + total
        key = (host, port, tls)
        timeout = connect_timeout if total is None else min(connect_timeout, total)
        conn = self._idle_connection(key) or await self._connect(key, timeout)
        if conn.closed or conn.transport is None:
            raise HopDisconnected(f"the connection to {host}:{port} closed")
        head = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {len(body)}\r\n"
        head += self._headers
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        response = HopResponse(conn, deadline, silence)
        conn.response = response
        conn.transport.write((head + "\r\n").encode("latin-1") + body)
        try:
            await response._headers()
        except BaseException:
            conn.response = None
            conn.close()
            raise
        return response

    def _idle_connection(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        oldest = time.monotonic() - self.idle_seconds
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.close()
        return None

    async def _connect(self, key: Key, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, tls = key
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, kind, proto, _, address = infos[0]
                sock = (
                    self._socket_factory(infos[0])
                    if self._socket_factory is not None
                    else socket.socket(family, kind, proto)
                )
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.sock_connect(sock, address)
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self, key),
                        sock=sock,
                        ssl=self._tls_context() if tls else None,
                        server_hostname=host if tls else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise HopConnectTimeout(f"no connection to {host}:{port} in {timeout:g} s") from exc
        except OSError as exc:
            raise HopConnectError(f"could not connect to {host}:{port}: {exc!r}") from exc
        self._open.add(conn)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()  # the system's CAs, as aiohttp's
        return self._tls

    def release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        """A closed connection leaves the pool (none is kept for hosts gone)."""
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    async def __aenter__(self) -> HopClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
