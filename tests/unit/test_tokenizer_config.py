"""The stored tokenizer config lists tokenizer.json's added tokens, or is left alone."""

from __future__ import annotations

from typing import Any

from sllm.store.tokenizer_config import with_added_tokens

PAD = {
    "id": 0,
    "content": "<pad>",
    "single_word": False,
    "lstrip": False,
    "rstrip": False,
    "normalized": False,
    "special": True,
}
USER = {**PAD, "id": 7, "content": "<|user|>", "special": False, "normalized": True}


def test_the_added_tokens_are_listed_by_id_without_it() -> None:
    config = {"eos_token": "<pad>", "tokenizer_class": "TokenizersBackend"}
    got = with_added_tokens(config, {"added_tokens": [PAD, USER], "model": {}})
    assert got == {
        **config,
        "added_tokens_decoder": {
            "0": {k: v for k, v in PAD.items() if k != "id"},
            "7": {k: v for k, v in USER.items() if k != "id"},
        },
    }
    assert "added_tokens_decoder" not in config  # a new dict, the argument untouched


def test_a_config_that_lists_them_already_is_kept() -> None:
    config = {"added_tokens_decoder": {"0": {"content": "<x>"}}}
    assert with_added_tokens(config, {"added_tokens": [PAD]}) is None


def test_anything_unexpected_keeps_the_config_as_it_is() -> None:
    unexpected: list[tuple[Any, Any]] = [
        ({}, {}),  # no added tokens
        ({}, {"added_tokens": []}),
        ([], {"added_tokens": [PAD]}),  # a config that is no object
        ({}, {"added_tokens": [{**PAD, "id": "0"}]}),
        ({}, {"added_tokens": [{k: v for k, v in PAD.items() if k != "content"}]}),
        ({}, {"added_tokens": [{**PAD, "future_field": 1}]}),  # AddedToken would refuse it
        ({}, {"added_tokens": [PAD, "<s>"]}),
        ({}, ["not", "an", "object"]),
    ]
    for config, tokenizer in unexpected:
        assert with_added_tokens(config, tokenizer) is None, (config, tokenizer)
