"""The worker's HTTP client to its backends, against real sockets: answers whole and
chunked, connections kept alive and reused only when clean, deadlines, failures, and
a bounded buffer."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from sllm.edge import hop_client
from sllm.edge.hop_client import (
    HopClient,
    HopConnectError,
    HopDisconnected,
    HopError,
    HopResponse,
    HopSilent,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


def answer(body: bytes, status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await read_request(reader)
        writer.write(answer(b"got " + body))
        await writer.drain()


@pytest.fixture
async def client() -> AsyncIterator[HopClient]:
    hop = HopClient(idle_seconds=30)
    yield hop
    await hop.close()


async def call(hop: HopClient, port: int, body: bytes = b"", total: float = 5.0) -> HopResponse:
    return await hop.post("127.0.0.1", port, "/x", body, total=total, connect_timeout=1.0)


async def post(hop: HopClient, port: int, body: bytes = b"{}", total: float = 5.0) -> bytes:
    resp = await call(hop, port, body, total)
    async with resp:
        assert resp.status == 200
        return await resp.read()


async def test_answers_come_back_on_one_kept_alive_connection(client: HopClient) -> None:
    async with Server(echo_forever) as server:
        got = [await post(client, server.port, b"%d" % i) for i in range(5)]
    assert got == [b"got %d" % i for i in range(5)]
    assert server.connections == 1


async def test_concurrent_calls_each_get_their_own_answer(client: HopClient) -> None:
    async with Server(echo_forever) as server:
        got = await asyncio.gather(*(post(client, server.port, b"%d" % i) for i in range(20)))
    assert got == [b"got %d" % i for i in range(20)]


async def test_a_chunked_answer_is_read_as_it_comes(client: HopClient) -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection was reused
        writer.write(answer(b"again"))
        await writer.drain()

    async with Server(chunked) as server:
        resp = await client.post(
            "127.0.0.1", server.port, "/x", b"", {}, total=5, connect_timeout=1
        )
        async with resp:
            pieces = resp.iter_any()
            assert await anext(pieces) == b"first"  # before the rest was even written
            release.set()
            assert [p async for p in pieces] == [b"second"]
        assert await post(client, server.port) == b"again"
    assert server.connections == 1


async def test_an_answer_left_unread_closes_its_connection(client: HopClient) -> None:
    first = True

    async def slow_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal first
        if first:  # the first connection's answer stops halfway, for a while
            first = False
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.write(b"-and-more")
            await writer.drain()
        await echo_forever(reader, writer)

    async with Server(slow_then_echo) as server:
        resp = await client.post(
            "127.0.0.1", server.port, "/x", b"", {}, total=5, connect_timeout=1
        )
        async with resp:
            assert resp.status == 200  # left before its body ended
        # A new connection: the rest of the first answer is not taken for this one's.
        assert await post(client, server.port, b"next") == b"got next"
    assert server.connections == 2


async def test_a_status_and_its_text(client: HopClient) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b'{"error": "no"}', "400 Bad Request"))
        await writer.drain()

    async with Server(refuse) as server:
        resp = await client.post(
            "127.0.0.1", server.port, "/x", b"", {}, total=5, connect_timeout=1
        )
        async with resp:
            assert (resp.status, await resp.text()) == (400, '{"error": "no"}')


async def test_a_server_that_dies_mid_answer_fails_the_call(client: HopClient) -> None:
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart")
        await writer.drain()
        writer.transport.abort()

    async with Server(die) as server:
        resp = await client.post(
            "127.0.0.1", server.port, "/x", b"", {}, total=5, connect_timeout=1
        )
        with pytest.raises(HopDisconnected, match="closed mid-answer"):
            async with resp:
                await resp.read()


async def test_a_server_that_closes_before_answering_fails_the_call(client: HopClient) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Server(hang_up) as server:
        with pytest.raises(HopDisconnected):
            await post(client, server.port)


async def test_nothing_listening_fails_at_once(client: HopClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(HopConnectError, match="could not connect"):
            await post(client, port)


async def test_the_deadline_covers_a_silent_server(client: HopClient) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with Server(silent) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await post(client, server.port, total=0.3)
        assert loop.time() - started < 1.0


async def test_a_connection_the_server_closed_while_idle_is_not_reused(client: HopClient) -> None:
    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(answer(b"got " + body))
        await writer.drain()  # then closed: as a server whose keep-alive ran out

    async with Server(one_answer) as server:
        assert await post(client, server.port, b"1") == b"got 1"
        await asyncio.sleep(0.1)
        assert await post(client, server.port, b"2") == b"got 2"
    assert server.connections == 2


async def test_an_idle_connection_past_its_time_is_not_reused() -> None:
    hop = HopClient(idle_seconds=0.1)
    try:
        async with Server(echo_forever) as server:
            await post(hop, server.port)
            await asyncio.sleep(0.2)
            await post(hop, server.port)
        assert server.connections == 2
    finally:
        await hop.close()


async def test_an_unread_answer_is_held_up_to_a_bound(
    client: HopClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hop_client, "BUFFER", 64 * 1024)
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        size = 64 * 1024 * 1024
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"x" * 65536
        while sent < size:
            writer.write(piece)
            sent += len(piece)
            await writer.drain()

    async with Server(flood) as server:
        resp = await client.post(
            "127.0.0.1", server.port, "/x", b"", {}, total=10, connect_timeout=1
        )
        async with resp:
            await asyncio.sleep(0.5)  # nothing read meanwhile
            assert resp._held < 1024 * 1024  # what it holds stays near its bound...
            assert sent < 32 * 1024 * 1024  # ...and the server is held back by TCP
            total = 0
            async for piece in resp.iter_any():
                total += len(piece)
            assert total == 64 * 1024 * 1024  # reading again goes on to the end


async def test_lines_of_any_size_as_they_come(client: HopClient) -> None:
    big = b"x" * 3_000_000

    async def ndjson(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b'{"a":1}\n{"b"', b":2}\n", big[:1000], big[1000:] + b"\n", b"last"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with Server(ndjson) as server:
        async with await call(client, server.port) as resp:
            lines = [await resp.readline(4_000_000) for _ in range(5)]
        async with await call(client, server.port) as resp:
            with pytest.raises(HopError, match="longer than"):
                for _ in range(3):
                    await resp.readline(1_000_000)
    assert lines == [b'{"a":1}\n', b'{"b":2}\n', big + b"\n", b"last", b""]


async def test_silence_is_told_from_the_deadline(client: HopClient) -> None:
    async def alive_then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(4):  # a line every 0.1 s: never 0.3 s of silence
            writer.write(b"2\r\n.\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)

    async with Server(alive_then_silent) as server:
        resp = await client.post(
            "127.0.0.1", server.port, "/x", b"", total=None, connect_timeout=1, silence=0.3
        )
        async with resp:
            for _ in range(4):
                assert await resp.readline(100) == b".\n"
            with pytest.raises(HopSilent):
                await resp.readline(100)


async def test_headers_and_tls(tmp_path: pathlib.Path) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    seen: list[bytes] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(answer(b"secret"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    hop = HopClient(idle_seconds=30, headers={"authorization": "Bearer t"})
    try:
        with pytest.raises(HopConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await hop.post("127.0.0.1", port, "/x", b"", total=5, connect_timeout=2, tls=True)
        hop._tls = ssl.create_default_context()
        authority.configure_trust(hop._tls)  # as a system that trusts its CA
        resp = await hop.post(
            "127.0.0.1", port, "/x", b"", {"x-one": "1"}, total=5, connect_timeout=2, tls=True
        )
        async with resp:
            assert await resp.read() == b"secret"
        assert b"authorization: Bearer t\r\n" in seen[-1] and b"x-one: 1\r\n" in seen[-1]
    finally:
        await hop.close()
        server.close()
