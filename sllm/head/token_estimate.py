"""What a request is charged against its tokens-per-minute limit, known before it runs.

The charge is taken when the request arrives, from its body alone: the prompt's
estimated tokens plus the most it may generate. The prompt estimate is its characters
/ 4, rounded up (a common rule of thumb for English with BPE tokenizers); the output
is ``max_completion_tokens``, ``max_tokens`` or the Responses API's
``max_output_tokens`` (``DEFAULT_COMPLETION_TOKENS`` when the request names none) times
``n``. Those numbers are read as the request's validation reads them (pydantic's lax
mode: ``"1000"`` and ``1000.0`` are 1000), so a request is charged what it will be
allowed to generate. The limit bounds what clients may ask for; it is never refunded
when a response is shorter.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import TypeAdapter, ValidationError

CHARS_PER_TOKEN = 4
# Charged as the output of a request that sets no limit (the transformers backend's default).
DEFAULT_COMPLETION_TOKENS = 256
PROMPT_FIELDS = ("messages", "prompt", "input", "instructions")
LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_INT = TypeAdapter(int)


def _count(value: Any) -> int | None:
    """``value`` as the request models validate an int field, or None where they would
    refuse it (the request then fails validation and runs nothing)."""
    if value is None:
        return None
    try:
        return _INT.validate_python(value)
    except ValidationError:
        return None


def _chars(value: Any) -> int:
    """Characters of text in a prompt, message list or input; a token id counts as one
    token's worth of characters."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return CHARS_PER_TOKEN
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        # Chat messages: their content (a string or a list of parts with text).
        return sum(_chars(value.get(k)) for k in ("content", "text") if k in value)
    return 0


def _limit(body: dict[str, Any]) -> int:
    for name in LIMIT_FIELDS:
        value = _count(body.get(name))
        if value is not None and value >= 0:
            return value
    return DEFAULT_COMPLETION_TOKENS


def estimate_tokens(path: str, body: Any) -> int:
    """Tokens charged for a request to ``path`` with this JSON ``body``."""
    if not isinstance(body, dict):
        return 0
    prompt = math.ceil(sum(_chars(body.get(f)) for f in PROMPT_FIELDS) / CHARS_PER_TOKEN)
    if path.endswith("/embeddings"):
        return prompt
    n = _count(body.get("n"))
    choices = n if n is not None and n > 0 else 1
    return prompt + _limit(body) * choices
