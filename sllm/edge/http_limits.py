"""Limits on what an HTTP client may make the head or a worker hold before a request
reaches the app: header bytes and count, time to send the headers, an idle connection.

uvicorn (with httptools) bounds none of these: a 128 MB header was parsed for 18 s of
CPU and answered 200, and connections sending a byte a second, or nothing, were held
forever. ``limited_protocol`` gives uvicorn a subclass of its httptools protocol that
counts what arrives before the headers end and arms timers around that phase. The
request body's limits (size, time between chunks) are the app's: ``edge/body_limit.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sllm.edge.turn_writes import TurnWritesProtocol

log = logging.getLogger(__name__)

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    keep_alive_timeout: float


def error_bytes(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response in OpenAI's error shape, closing the connection."""
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, REASONS[status], len(body))
    )
    return head + body


class _LimitedProtocol(TurnWritesProtocol):
    limits: HttpLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes and header lines of a request whose headers have not ended yet; a new
        # connection and each finished request wait for the next request's headers.
        self._awaiting_headers = True
        self._received = 0  # bytes received while awaiting the headers
        self._header_bytes = 0  # of the URL and header lines parsed
        self._header_count = 0
        self._refusal: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that
        # never sends a byte would be held forever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counting = self._awaiting_headers
        super().data_received(data)
        if counting and self._awaiting_headers:
            # The parser hands over a header line only once it ended: a line that never
            # ends is counted here, as it arrives (a read is at most 256 KiB).
            self._received += len(data)
            if self._received > self.limits.max_header_bytes and self._refusal is None:
                self._refusal = self._too_large()
        if self._refusal is not None and not self.transport.is_closing():
            self._refuse(431, self._refusal)

    def _too_large(self) -> str:
        return f"request headers over {self.limits.max_header_bytes} bytes"

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._header_count = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._headers_too_slow
            )

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_count > self.limits.max_headers:
            self._refusal = f"more than {self.limits.max_headers} request headers"
        elif self._header_bytes > self.limits.max_header_bytes:
            self._refusal = self._too_large()
        else:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        if self._refusal is None:
            super().on_headers_complete()
        # else: refused once the parser returns (data_received); the app never sees it.

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and self.cycle.scope is self.scope:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.cycle is not None and self.cycle.scope is self.scope:
            super().on_message_complete()
        self._awaiting_headers = True
        self._received = 0

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(408, f"request headers not received within {self.limits.header_timeout} s")

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, status: int, message: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        log.warning("refused a request from %s: %s", client, message)
        code = "request_timeout" if status == 408 else "request_header_fields_too_large"
        self._cancel_header_timer()
        self.transport.write(error_bytes(status, message, code))
        self.transport.close()


def limited_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """uvicorn's ``http`` option: its httptools protocol under ``limits``."""
    return type("LimitedHttpToolsProtocol", (_LimitedProtocol,), {"limits": limits})
