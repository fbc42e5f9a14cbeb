"""A response's head and body, and whatever else a server writes to a connection in one
turn of the event loop, leave as one send (``sllm/edge/turn_writes.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from uvicorn.server import ServerState

from sllm.edge.http_limits import HttpLimits, limited_protocol
from sllm.edge.turn_writes import TurnWriter, TurnWritesProtocol

pytestmark = pytest.mark.timeout(30)


class Transport(asyncio.Transport):
    """Records each send."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8343), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def app() -> FastAPI:
    api = FastAPI()

    @api.get("/json")
    async def answer() -> dict[str, str]:
        return {"text": "hello"}

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> Any:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
            await asyncio.sleep(0.05)
            yield b"data: 3\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return api


async def served(protocol_class: type, path: str, keep_alive: bool = True) -> Transport:
    config = uvicorn.Config(app(), log_config=None, access_log=False)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    connection = b"" if keep_alive else b"connection: close\r\n"
    protocol.data_received(b"GET %s HTTP/1.1\r\nhost: x\r\n%s\r\n" % (path.encode(), connection))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if b"".join(transport.sends).endswith((b"}", b"0\r\n\r\n")):
            break
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    return transport


@pytest.mark.parametrize(
    "protocol_class",
    [TurnWritesProtocol, limited_protocol(HttpLimits(8192, 100, 5.0, 5.0))],
    ids=["backend", "edge"],
)
async def test_a_json_answer_is_one_send(protocol_class: type) -> None:
    transport = await served(protocol_class, "/json")
    assert len(transport.sends) == 1
    head, _, body = transport.sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b'{"text":"hello"}'


async def test_a_closing_answer_is_sent_before_the_close() -> None:
    transport = await served(TurnWritesProtocol, "/json", keep_alive=False)
    assert len(transport.sends) == 1 and transport.sends[0].endswith(b'{"text":"hello"}')
    assert transport.closed


async def test_a_stream_sends_what_each_turn_wrote() -> None:
    sends = (await served(TurnWritesProtocol, "/stream")).sends
    # The head and the first two events in one turn; the third after a pause, with the end.
    assert len(sends) == 2
    assert sends[0].startswith(b"HTTP/1.1 200") and sends[0].count(b"data:") == 2
    assert b"data: 3" in sends[1] and sends[1].endswith(b"0\r\n\r\n")


async def test_nothing_is_sent_on_a_closed_connection() -> None:
    transport = Transport()
    writer = TurnWriter(transport, asyncio.get_running_loop())
    writer.write(b"a")
    transport.closed = True
    await asyncio.sleep(0)
    assert transport.sends == []
