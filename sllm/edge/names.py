"""What a name that arrives over the network may look like, wherever it arrives.

Names become Redis keys, file names, process arguments, HTTP headers and log lines, so
each kind is a short run of plain ASCII. The patterns are written without look-arounds,
so that pydantic's regex engine, JSON Schema and Schemathesis all read them the same.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

# Letters, digits, '.', '_', '-' and '/', starting with a letter or digit, and never
# two dots in a row: no name can read as a parent directory.
MODEL_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_/\-])*\.?$"
MODEL_MAX = 128
MODEL_RULE = (
    f"model names are 1-{MODEL_MAX} characters of letters, digits, '.', '_', '-' and '/', "
    "starting with a letter or digit, with no '..'"
)

# Clients call an adapter as MODEL:ADAPTER, so adapter names are plain words.
ADAPTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
ADAPTER_MAX = 64
ADAPTER_RULE = (
    f"adapter names are 1-{ADAPTER_MAX} letters, digits, '.', '_' and '-', "
    "starting with a letter or digit"
)

# What an OpenAI request's `model` may be: MODEL, or MODEL:ADAPTER for a LoRA adapter.
TARGET_PATTERN = f"{MODEL_PATTERN[:-1]}(:{ADAPTER_PATTERN[1:-1]})?$"
TARGET_MAX = MODEL_MAX + 1 + ADAPTER_MAX

# Node ids (`--node-id`, or `worker-N` from the head) and instance ids (the model's name
# with '/' made '-', then a suffix) are plain words too.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
NODE_ID_MAX = 128
INSTANCE_ID_MAX = 256
ID_RULE = "ids are letters, digits, '.', '_' and '-', starting with a letter or digit"

# X-Request-Id is chosen by clients (UUIDs, "req_...", base64): printable ASCII without
# spaces, quotes or separators that would need escaping in a header or a log line.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:/+=@\-]+$"
REQUEST_ID_MAX = 128
REQUEST_ID_RULE = (
    f"X-Request-Id is 1-{REQUEST_ID_MAX} of letters, digits and '.', '_', ':', '/', '+', "
    "'=', '@', '-'"
)

_MODEL = re.compile(MODEL_PATTERN)
_ADAPTER = re.compile(ADAPTER_PATTERN)
_ID = re.compile(ID_PATTERN)
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def _fits(pattern: re.Pattern[str], value: str, longest: int) -> bool:
    # fullmatch: '$' alone would let a trailing newline through.
    return len(value) <= longest and pattern.fullmatch(value) is not None


def is_model_name(value: str) -> bool:
    return _fits(_MODEL, value, MODEL_MAX)


def is_adapter_name(value: str) -> bool:
    return _fits(_ADAPTER, value, ADAPTER_MAX)


def is_node_id(value: str) -> bool:
    return _fits(_ID, value, NODE_ID_MAX)


def is_instance_id(value: str) -> bool:
    return _fits(_ID, value, INSTANCE_ID_MAX)


def is_request_id(value: str) -> bool:
    return _fits(_REQUEST_ID, value, REQUEST_ID_MAX)


# The same rules as pydantic field types, for request bodies: the pattern is enforced
# and appears in the OpenAPI schema.
ModelName = Annotated[str, Field(min_length=1, max_length=MODEL_MAX, pattern=MODEL_PATTERN)]
AdapterName = Annotated[str, Field(min_length=1, max_length=ADAPTER_MAX, pattern=ADAPTER_PATTERN)]
NodeId = Annotated[str, Field(min_length=1, max_length=NODE_ID_MAX, pattern=ID_PATTERN)]
InstanceId = Annotated[str, Field(min_length=1, max_length=INSTANCE_ID_MAX, pattern=ID_PATTERN)]
