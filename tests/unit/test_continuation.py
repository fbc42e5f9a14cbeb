"""A resumed stream restated for vLLM's server, and its usage recounted."""

from __future__ import annotations

import json

from sllm.worker.continuation import CONTINUE_FIELD, PREFILL_FIELD, recounted, restated


def test_a_chat_goes_on_from_the_produced_text_as_the_assistant_message() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
        "stream": True,
        CONTINUE_FIELD: "Hello the",
    }
    out = restated("/v1/chat/completions", body, prior_tokens=3)
    assert CONTINUE_FIELD not in out and out["max_tokens"] == 7 and out["stream"]
    assert out["messages"][-1] == {"role": "assistant", "content": "Hello the"}
    assert out["messages"][:-1] == body["messages"]
    assert out["continue_final_message"] is True and out["add_generation_prompt"] is False


def test_a_completion_goes_on_from_prompt_plus_text_within_its_limit() -> None:
    body = {"model": "m", "prompt": "Once", "max_completion_tokens": 2, CONTINUE_FIELD: " upon"}
    out = restated("/v1/completions", body, prior_tokens=5)
    assert out["prompt"] == "Once upon" and out["max_completion_tokens"] == 1
    assert "continue_final_message" not in out
    # A floor counts what was produced too (as sllm's own servers count it).
    assert restated("/v1/completions", {**body, "min_tokens": 8}, 5)["min_tokens"] == 3
    assert restated("/v1/completions", {**body, "min_tokens": 2}, 5)["min_tokens"] == 0
    # No limit: none is made up.
    assert "max_tokens" not in restated("/v1/completions", {**body, "prompt": "x"}, 1)


def test_usage_counts_the_produced_tokens_as_completion_tokens() -> None:
    chunk = {"id": "c", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 4}}
    usage = json.loads(recounted(json.dumps(chunk), 3))["usage"]
    assert usage == {"prompt_tokens": 9, "completion_tokens": 7}
    plain = '{"id": "c", "choices": [{"delta": {"content": "x"}}]}'
    assert recounted(plain, 3) is plain
    assert recounted('{"usage": null}', 3) == '{"usage": null}'


def test_a_migrations_warm_up_asks_vllm_for_one_token_after_the_text() -> None:
    """The warm-up (``sllm_prefill``, max_tokens 1) reaches vLLM as a continuation of
    one token, without the field vLLM does not know."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "stream": False,
        CONTINUE_FIELD: "Hello the",
        PREFILL_FIELD: True,
    }
    out = restated("/v1/chat/completions", body, prior_tokens=3)
    assert PREFILL_FIELD not in out and CONTINUE_FIELD not in out
    assert out["max_tokens"] == 1 and out["continue_final_message"] is True
