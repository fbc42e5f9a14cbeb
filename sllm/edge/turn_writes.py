"""What an HTTP server writes to a connection in one turn of the event loop goes out as
one send.

uvicorn writes a response's head when the app starts it and its body when the app sends
it: two sends for every JSON answer, and on a VM each send to a waiting process wakes it
(the reader then parses a head with no body and sleeps again). Gathered until the loop's
turn ends, they are one send; the events a stream relays in one turn likewise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TurnWriter:
    """A transport whose writes in one turn of the loop are sent together, at its end;
    every other call goes to the transport (a close sends what is gathered first)."""

    __slots__ = ("_loop", "_parts", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self._send)
        self._parts.append(data)

    def close(self) -> None:
        self._send()
        self._transport.close()

    def _send(self) -> None:
        parts, self._parts = self._parts, []
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TurnWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, its writes gathered per turn (``TurnWriter``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control keeps the transport itself (it pauses and resumes reading).
        self.transport = TurnWriter(transport, self.loop)  # type: ignore[assignment]
