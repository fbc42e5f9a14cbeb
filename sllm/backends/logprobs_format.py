"""Log-probabilities in OpenAI's two shapes, as vLLM's server writes them. Pure.

Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``.
Completions (the legacy shape): ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}``, where ``top_logprobs`` maps each place's likeliest tokens (and the
chosen one) to their log-probabilities, and ``text_offset`` counts characters from the
start of the choice's text (its echoed prompt included).
"""

from __future__ import annotations

from typing import Any

from sllm.backends.engine import TokenLogprob

# JSON has no -infinity: OpenAI and vLLM floor a log-probability here.
FLOOR = -9999.0


def _floored(value: float) -> float:
    return max(value, FLOOR)


def chat(entries: list[TokenLogprob]) -> dict[str, Any]:
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": _floored(logprob), "bytes": list(token.encode())}

    return {
        "content": [
            {
                **one(e.token, e.logprob if e.logprob is not None else FLOOR),
                "top_logprobs": [one(t, v) for t, v in e.top],
            }
            for e in entries
        ]
    }


def completion(entries: list[TokenLogprob], offset: int) -> tuple[dict[str, Any], int]:
    """The shape for these tokens, their first at character ``offset``; and the offset
    after them (a streamed choice's next chunk goes on from it)."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    body = {
        "tokens": [e.token for e in entries],
        "token_logprobs": [None if e.logprob is None else _floored(e.logprob) for e in entries],
        "top_logprobs": [
            None
            if e.logprob is None
            else {e.token: _floored(e.logprob), **{t: _floored(v) for t, v in e.top}}
            for e in entries
        ],
        "text_offset": offsets,
    }
    return body, offset
