"""Headers of the OpenAI API that sllm reads, checked before the gateway runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Request

from sllm.config import HeadSettings
from sllm.edge import names
from sllm.edge.errors import RequestError

TIMEOUT_HEADER = "X-Request-Timeout"


async def check_request_id(
    x_request_id: Annotated[
        str | None,
        Header(
            description="Your id of the request: echoed back and passed to the backend.",
            # Documented for clients and fuzzers; the check below says what is wrong.
            json_schema_extra={
                "pattern": names.REQUEST_ID_PATTERN,
                "maxLength": names.REQUEST_ID_MAX,
            },
        ),
    ] = None,
) -> None:
    """X-Request-Id travels into Redis, a backend's headers and log lines: plain only."""
    if x_request_id is not None and not names.is_request_id(x_request_id):
        raise RequestError(names.REQUEST_ID_RULE, param="X-Request-Id")


def request_timeout(request: Request, settings: HeadSettings) -> float:
    """Seconds a request may take: its ``X-Request-Timeout`` or the default."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return settings.request_timeout
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= settings.max_request_timeout:
        raise RequestError(
            f"{TIMEOUT_HEADER} must be seconds in (0, {settings.max_request_timeout:g}]",
            param=TIMEOUT_HEADER,
        )
    return seconds
