"""Which requests a response cache may answer, and their keys."""

from __future__ import annotations

from sllm.head.cache_policy import cache_key

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_only_deterministic_requests_have_a_key() -> None:
    assert cache_key("m", "1", CHAT, BODY) is None  # the model's own sampling
    assert cache_key("m", "1", CHAT, {**BODY, "temperature": 0.7}) is None
    assert cache_key("m", "1", CHAT, {**BODY, "temperature": 0.7, "n": 3}) is None
    assert cache_key("m", "1", CHAT, {**BODY, "temperature": 0}) is not None
    assert cache_key("m", "1", CHAT, {**BODY, "temperature": 0.7, "seed": 3, "n": 2})
    assert cache_key("m", "1", "/v1/embeddings", {"model": "m", "input": "x"}) is not None


def test_keys_follow_the_model_version_and_the_request_but_not_the_user() -> None:
    greedy = {**BODY, "temperature": 0}
    key = cache_key("m", "1", CHAT, greedy)
    assert key == cache_key("m", "1", CHAT, {**greedy, "user": "someone"})
    assert key == cache_key("m", "1", CHAT, dict(reversed(list(greedy.items()))))
    assert key != cache_key("m", "2", CHAT, greedy)  # the config was updated
    assert key != cache_key("m", "1", CHAT, {**greedy, "stream": True})
    assert key != cache_key("m", "1", CHAT, {**greedy, "max_tokens": 5})
    assert key != cache_key("other", "1", CHAT, greedy)
