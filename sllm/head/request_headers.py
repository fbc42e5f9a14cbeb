"""Headers of the OpenAI API that sllm reads, checked before the gateway runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from sllm.edge import names
from sllm.edge.errors import RequestError


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
