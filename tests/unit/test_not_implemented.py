"""Request fields sllm's own backends do not implement are named; asking for nothing passes."""

from __future__ import annotations

from sllm.edge.protocol import ChatCompletionRequest, CompletionRequest, not_implemented


def chat(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def test_fields_that_ask_for_something_unimplemented_are_named_in_order() -> None:
    req = chat(logit_bias={"1": 2}, functions=[{"name": "f"}], foo=5)
    # An unknown field goes to the backend as sent (vLLM may know it).
    assert not_implemented(req.model_extra) == ["functions", "logit_bias"]
    assert not_implemented(chat(suffix="x").model_extra) == ["suffix"]
    # vLLM's extensions are vLLM's: refused by sllm's own backends, not ignored.
    assert not_implemented(chat(guided_json={"type": "object"}).model_extra) == ["guided_json"]
    assert not_implemented(
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "best_of": 3}).model_extra
    ) == ["best_of"]


def test_values_that_ask_for_nothing_pass() -> None:
    nothing = chat(
        functions=[],
        function_call="none",
        logprobs=False,
        top_logprobs=0,
        logit_bias={},
        modalities=["text"],
        best_of=1,
    )
    assert not_implemented(nothing.model_extra) == []
    assert not_implemented(chat().model_extra) == []
    assert not_implemented(None) == []
