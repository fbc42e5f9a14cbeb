"""A resumed stream (``sllm_continue_from``) for a backend that does not take that field
(vLLM's OpenAI server): the same request restated with what vLLM offers to go on from
text already produced. Pure.

Chat: the text produced so far becomes the last assistant message, continued
(``continue_final_message``, no new generation prompt); completions: the prompt plus
the text. The token limits leave out what was produced, and the usage the backend
reports is put back as the client's first attempt would have counted it: the produced
tokens are completion tokens, not prompt tokens.
"""

from __future__ import annotations

import json
from typing import Any

CONTINUE_FIELD = "sllm_continue_from"
PREFILL_FIELD = "sllm_prefill"
_LIMITS = ("max_tokens", "max_completion_tokens")


def restated(endpoint: str, body: dict[str, Any], prior_tokens: int) -> dict[str, Any]:
    """``body`` (which has ``CONTINUE_FIELD``) as vLLM's continuation of that text."""
    produced = str(body[CONTINUE_FIELD])
    # A migration's warm-up asks one token (max_tokens 1, kept at 1 below): vLLM
    # knows no field for it.
    out = {k: v for k, v in body.items() if k not in (CONTINUE_FIELD, PREFILL_FIELD)}
    for limit in _LIMITS:
        if isinstance(out.get(limit), int):
            # At least one: a limit of 0 means "no output" to some servers, "none" to none.
            out[limit] = max(1, out[limit] - prior_tokens)
    if isinstance(out.get("min_tokens"), int):  # vLLM's: what was produced counts too
        out["min_tokens"] = max(0, out["min_tokens"] - prior_tokens)
    if endpoint == "/v1/chat/completions":
        out["messages"] = [*out["messages"], {"role": "assistant", "content": produced}]
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    else:
        out["prompt"] = f"{out['prompt']}{produced}"
    return out


def recounted(data: str, prior_tokens: int) -> str:
    """A stream chunk (JSON text) with its usage, if it has one, counting the produced
    tokens as completion tokens; other chunks unchanged (and not parsed)."""
    if '"usage"' not in data:
        return data
    chunk = json.loads(data)
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return data
    usage["prompt_tokens"] = max(0, int(usage.get("prompt_tokens") or 0) - prior_tokens)
    usage["completion_tokens"] = int(usage.get("completion_tokens") or 0) + prior_tokens
    return json.dumps(chunk)
