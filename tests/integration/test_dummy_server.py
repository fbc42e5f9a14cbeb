"""The dummy backend as the worker runs it: a real process speaking OpenAI's protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sllm.backends.base import LaunchSpec
from sllm.backends.dummy_engine import words
from sllm.backends.registry import get_backend
from sllm.client.launcher import Child, free_port, spawn, wait_healthy


def start(tmp_path: Path, config: dict[str, Any]) -> Child:
    port = free_port()
    spec = LaunchSpec(instance_id="inst-1", model="m", port=port, backend_config=config)
    argv = get_backend("dummy").command(spec)
    child = spawn("dummy", argv, tmp_path / "dummy.log", f"http://127.0.0.1:{port}")
    wait_healthy(child, 20)
    return child


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Child]:
    child = start(tmp_path, {"default_max_tokens": 12})
    yield child
    child.stop()


@pytest.fixture
def sdk(backend: Child) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{backend.url}/v1", api_key="none", max_retries=0) as client:
        yield client


def test_chat_stream_equals_non_stream_and_names_the_instance(sdk: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "tell me about redis"}]
    chat = sdk.chat.completions.create(model="m", messages=messages, max_tokens=9, seed=1)
    assert chat.system_fingerprint == "inst-1"
    text = chat.choices[0].message.content or ""
    prompt = "user: tell me about redis\nassistant:"
    assert text == " ".join(words(prompt, 0, 1, 9))
    assert chat.usage is not None
    assert chat.usage.completion_tokens == len(text.split())
    assert chat.usage.prompt_tokens == len(prompt.split())
    expected_finish = "length" if len(text.split()) == 9 else "stop"
    assert chat.choices[0].finish_reason == expected_finish

    stream = sdk.chat.completions.create(
        model="m",
        messages=messages,
        max_tokens=9,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == expected_finish and finishes.count(expected_finish) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == chat.usage.total_tokens


def test_completions_n_stop_echo_and_default_limit(sdk: openai.OpenAI) -> None:
    full = sdk.completions.create(model="m", prompt="alpha beta gamma", n=3)
    assert sorted(c.index for c in full.choices) == [0, 1, 2]
    assert all(len(c.text.split()) <= 12 for c in full.choices)
    assert len({c.text for c in full.choices}) > 1

    first = full.choices[0].text
    cut_word = first.split()[2] if len(first.split()) > 2 else first
    stopped = sdk.completions.create(model="m", prompt="alpha beta gamma", stop=[cut_word])
    assert stopped.choices[0].text == first[: first.index(cut_word)]
    assert stopped.choices[0].finish_reason == "stop"

    echoed = sdk.completions.create(model="m", prompt="alpha beta gamma", echo=True, max_tokens=2)
    assert echoed.choices[0].text.startswith("alpha beta gamma")


def test_embeddings_float_and_base64(sdk: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it.
    default = sdk.embeddings.create(model="m", input=["one", "two"])
    floats = sdk.embeddings.create(model="m", input=["one", "two"], encoding_format="float")
    assert len(default.data) == 2 and len(default.data[0].embedding) == 16
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    sized = sdk.embeddings.create(model="m", input="one", dimensions=5)
    assert len(sized.data[0].embedding) == 5


def test_errors_have_openai_shape(backend: Child) -> None:
    wrong = httpx.post(
        f"{backend.url}/v1/chat/completions",
        json={"model": "other", "messages": [{"role": "user", "content": "x"}]},
    )
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    bad = httpx.post(f"{backend.url}/v1/completions", json={"model": "m", "prompt": "x", "n": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"


def test_crash_after_tokens_cuts_a_stream(tmp_path: Path) -> None:
    child = start(tmp_path, {"crash_after_tokens": 2, "default_max_tokens": 10})
    try:
        body = {"model": "m", "prompt": "alpha beta gamma", "stream": True, "seed": 3}
        data: list[str] = []
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("POST", f"{child.url}/v1/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        data.append(line[6:])
        texts = [json.loads(d)["choices"][0]["text"] for d in data if d != "[DONE]"]
        assert "[DONE]" not in data and len(texts) <= 2
        child.popen.wait(5)
        assert child.popen.returncode == 1
    finally:
        child.stop()


def test_an_unknown_knob_stops_the_backend_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="colour"):
        start(tmp_path, {"colour": "red"})


@pytest.mark.parametrize("cut", [0, 1, 4, 12])
def test_a_continuation_goes_on_exactly_where_the_produced_text_stops(
    sdk: openai.OpenAI, cut: int
) -> None:
    prompt = "one two three four five"
    whole = sdk.completions.create(model="m", prompt=prompt, max_tokens=12, seed=2)
    text = whole.choices[0].text
    produced = " ".join(text.split()[:cut])
    rest = sdk.completions.create(
        model="m",
        prompt=prompt,
        max_tokens=12,
        seed=2,
        extra_body={"sllm_continue_from": produced},
    )
    assert produced + rest.choices[0].text == text
    assert rest.usage == whole.usage  # the produced part counts, once
    assert rest.choices[0].finish_reason == whole.choices[0].finish_reason


def test_continuations_of_several_choices_are_refused(backend: Child) -> None:
    body = {"model": "m", "prompt": "x", "n": 2, "sllm_continue_from": "y"}
    resp = httpx.post(f"{backend.url}/v1/completions", json=body, timeout=10)
    assert resp.status_code == 400 and "n = 1" in resp.text


def test_logprobs_are_deterministic_sum_under_one_and_stream_as_they_answer(
    sdk: openai.OpenAI,
) -> None:
    import math

    messages: Any = [{"role": "user", "content": "tell me about redis"}]
    ask = dict(model="m", messages=messages, max_tokens=8, logprobs=True, top_logprobs=3)
    chat = sdk.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert chat == sdk.chat.completions.create(**ask).model_copy(  # type: ignore[call-overload]
        update={"id": chat.id, "created": chat.created}
    )
    content = chat.choices[0].logprobs.content
    text = chat.choices[0].message.content
    assert "".join(e.token for e in content) == text  # a token is a word
    assert len(content) == chat.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob < 0
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) < 1
    streamed = [
        e
        for c in sdk.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert streamed == content

    # echo: the prompt's words first, the first without a log-probability.
    done = sdk.completions.create(
        model="m", prompt="one day a word", max_tokens=4, logprobs=2, echo=True
    )
    lp = done.choices[0].logprobs
    assert lp.tokens[:4] == ["one", " day", " a", " word"] and lp.token_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:]) and lp.top_logprobs[0] is None
    assert len(lp.tokens) == 4 + done.usage.completion_tokens
    assert "".join(lp.tokens) == done.choices[0].text
    assert lp.text_offset[:5] == [0, 3, 7, 9, 14]
    chunks = list(
        sdk.completions.create(
            model="m", prompt="one day a word", max_tokens=4, logprobs=2, echo=True, stream=True
        )
    )
    assert [
        t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens
    ] == lp.tokens
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        sdk.chat.completions.create(model="m", messages=messages, top_logprobs=2)
