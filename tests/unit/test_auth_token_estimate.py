"""What a request is charged against its tokens-per-minute limit."""

from __future__ import annotations

from typing import Any

import pytest

from sllm.head.token_estimate import DEFAULT_COMPLETION_TOKENS, estimate_tokens

CHAT = "/v1/chat/completions"


def test_chat_prompt_plus_max_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 5}
    assert estimate_tokens(CHAT, body) == 10 + 5


def test_characters_round_up_and_parts_count() -> None:
    messages = [
        {"role": "system", "content": "abc"},
        {"role": "user", "content": [{"type": "text", "text": "defgh"}]},
    ]
    assert estimate_tokens(CHAT, {"messages": messages, "max_tokens": 0}) == 2


def test_max_completion_tokens_wins_and_n_multiplies() -> None:
    body = {"messages": [], "max_tokens": 100, "max_completion_tokens": 7, "n": 3}
    assert estimate_tokens(CHAT, body) == 21


def test_no_limit_charges_the_default() -> None:
    assert estimate_tokens("/v1/completions", {"prompt": ""}) == DEFAULT_COMPLETION_TOKENS


@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [("abcdefgh", 2), (["abcd", "abcd"], 2), ([1, 2, 3], 3), ([[1, 2], [3]], 3)],
)
def test_completion_prompts(prompt: Any, tokens: int) -> None:
    assert estimate_tokens("/v1/completions", {"prompt": prompt, "max_tokens": 0}) == tokens


def test_embeddings_charge_their_input_only() -> None:
    assert estimate_tokens("/v1/embeddings", {"input": ["abcd", "abcdefgh"]}) == 3


@pytest.mark.parametrize("body", [None, [], "text", {"messages": None, "max_tokens": True}])
def test_odd_bodies_do_not_fail(body: Any) -> None:
    assert estimate_tokens(CHAT, body) >= 0


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [], "max_tokens": "1000"},
        {"messages": [], "max_tokens": 1000.0},
        {"messages": [], "max_completion_tokens": " 500 ", "n": "2"},
        {"messages": [], "max_tokens": 250, "n": 4.0},
    ],
)
def test_numbers_are_read_as_validation_reads_them(body: dict[str, Any]) -> None:
    # A string or float the request models accept as an int is charged as that int,
    # never as the default (which let 6,000 tokens through a 2,000 limit).
    assert estimate_tokens(CHAT, body) == 1000


def test_responses_api_output_limit_and_instructions() -> None:
    body = {"input": "x" * 40, "instructions": "y" * 8, "max_output_tokens": "30"}
    assert estimate_tokens("/v1/responses", body) == 12 + 30
