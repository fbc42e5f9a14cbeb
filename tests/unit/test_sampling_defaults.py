"""A model's generation config -> the sampling defaults its requests get."""

from __future__ import annotations

from sllm.backends.sampling_defaults import from_generation_config


def test_only_the_sampling_fields_the_config_sets_are_defaults() -> None:
    diff = {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "do_sample": True,
        "max_new_tokens": 64,
        "eos_token_id": [1, 2],
    }
    assert from_generation_config(diff) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20.0,
        "repetition_penalty": 1.05,
    }
    assert from_generation_config({"bos_token_id": 1}) == {}
    assert from_generation_config({"top_k": None, "temperature": True}) == {}
