"""The whole request path through real head and worker processes, with the openai SDK."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any, Literal

import httpx
import openai
import pydantic
import pytest
import redis

from sllm.backends.dummy_engine import VOCAB
from tests.e2e.conftest import Cluster, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def one_worker(cluster: Cluster) -> Cluster:
    cluster.start_head()
    cluster.start_worker()
    return cluster


def test_chat_completions_embeddings_and_models(one_worker: Cluster) -> None:
    one_worker.deploy("m")
    client = one_worker.client()

    chat = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        seed=3,
        user="u1",
        stop=["never-said"],
    )
    text = chat.choices[0].message.content
    assert text and chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    assert chat.system_fingerprint  # names the instance that served it

    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == text
    assert usage is not None and usage.total_tokens == chat.usage.total_tokens

    completion = client.completions.create(model="m", prompt="once upon a time", max_tokens=5)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 5

    two = client.completions.create(model="m", prompt="once upon a time", max_tokens=4, n=2)
    assert sorted(c.index for c in two.choices) == [0, 1]

    emb = client.embeddings.create(model="m", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    assert emb.usage.prompt_tokens > 0

    assert [m.id for m in client.models.list().data] == ["m"]


def test_a_model_and_its_adapters_are_retrieved_with_their_context(one_worker: Cluster) -> None:
    one_worker.deploy(
        "m", backend_config={"context_length": 512}, lora_adapters={"a1": "/adapters/a1"}
    )
    client = one_worker.client()
    # The context is the instance's to say: none has run yet.
    card = client.models.retrieve("m")
    assert (card.id, card.owned_by, card.model_extra) == (
        "m",
        "sllm",
        {"root": None, "parent": None, "max_model_len": None},
    )
    assert card.created > 0
    client.completions.create(model="m", prompt="hi", max_tokens=2)
    wait_until(
        lambda: client.models.retrieve("m").model_extra["max_model_len"] == 512,  # type: ignore[index]
        10,
        "the instance's context in the heartbeat",
    )
    adapter = client.models.retrieve("m:a1")
    assert adapter.model_extra is not None
    assert adapter.model_extra["parent"] == "m" and adapter.model_extra["max_model_len"] == 512
    assert [m.id for m in client.models.list().data] == ["m", "m:a1"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nope")
    assert missing.value.code == "model_not_found"


def test_errors_are_openai_shaped(one_worker: Cluster) -> None:
    one_worker.deploy("m")
    client = one_worker.client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"

    assert one_worker.head is not None
    bad = httpx.post(
        f"{one_worker.head.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
    )
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "max_tokens" and "max_tokens" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}

    not_json = httpx.post(
        f"{one_worker.head.url}/v1/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 400

    unknown_field = httpx.post(
        f"{one_worker.head.url}/register", json={"model": "x", "backend": "dummy", "colour": 1}
    )
    assert unknown_field.status_code == 400 and "colour" in unknown_field.json()["error"]["message"]
    # A backend's own knobs are checked at deploy too, not when an instance starts.
    bad_knob = httpx.post(
        f"{one_worker.head.url}/register",
        json={
            "model": "x",
            "backend": "transformers",
            "backend_config": {"pretrained_model_name_or_path": "m", "dtype": "int3"},
        },
    )
    assert bad_knob.status_code == 400
    assert "backend_config.dtype" in bad_knob.json()["error"]["message"]


def test_scale_from_zero_and_back_to_zero(one_worker: Cluster) -> None:
    one_worker.deploy(
        "m",
        auto_scaling_config={"min_instances": 0, "max_instances": 1, "keep_alive": 1},
        backend_config={"startup_delay": 0.5},
    )
    assert one_worker.model_status("m")["instances"] == []  # type: ignore[index]
    started = time.monotonic()
    reply = one_worker.client().completions.create(model="m", prompt="wake up", max_tokens=3)
    cold = time.monotonic() - started
    # The dummy may end at once (its end word is drawn like any other): check it answered.
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage is not None
    assert cold < 10, f"cold start took {cold:.1f}s"
    status = one_worker.model_status("m")
    assert status is not None and len(status["instances"]) == 1

    wait_until(
        lambda: one_worker.model_status("m")["instances"] == [],  # type: ignore[index]
        10,
        "scale back to zero after keep_alive",
    )


def test_a_burst_from_zero_starts_one_instance(one_worker: Cluster) -> None:
    one_worker.deploy(
        "m",
        auto_scaling_config={
            "min_instances": 0,
            "max_instances": 4,
            "queue_per_instance_threshold": 100,
            "keep_alive": 30,
        },
        backend_config={"startup_delay": 1.0},
    )
    client = one_worker.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(
                lambda i: client.completions.create(model="m", prompt=f"p{i}", max_tokens=2),
                range(16),
            )
        )
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
    assert len(one_worker.model_status("m")["instances"]) == 1  # type: ignore[index]


def test_two_workers_share_the_load(cluster: Cluster) -> None:
    cluster.start_head()
    cluster.start_worker()
    cluster.start_worker()
    cluster.deploy(
        "m",
        auto_scaling_config={"min_instances": 2, "max_instances": 2, "keep_alive": 30},
        backend_config={"ttft": 0.2},
    )
    cluster.wait_ready("m", 2, timeout=15)
    nodes = {i["node_id"] for i in cluster.model_status("m")["instances"]}  # type: ignore[index]
    assert len(nodes) == 2, "placement should spread the instances over both workers"
    client = cluster.client()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda i: client.completions.create(model="m", prompt=f"p{i}", max_tokens=2),
                range(16),
            )
        )
    assert len({r.system_fingerprint for r in replies}) == 2


def test_deleting_a_model_fails_its_queued_requests(one_worker: Cluster) -> None:
    one_worker.deploy("m", backend_config={"startup_delay": 30})
    client = one_worker.client()
    assert one_worker.head is not None

    def ask(i: int) -> Exception | None:
        try:
            client.completions.create(model="m", prompt=f"p{i}", max_tokens=2, timeout=20)
        except Exception as exc:
            return exc
        return None

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, i) for i in range(4)]
        wait_until(
            lambda: one_worker.model_status("m")["queue_length"] == 4,  # type: ignore[index]
            10,
            "four queued requests",
        )
        resp = httpx.post(f"{one_worker.head.url}/delete", json={"model": "m"}, timeout=10)
        assert resp.status_code == 200 and resp.json()["queued_requests_failed"] == 4
        errors = [f.result(timeout=15) for f in futures]
    for err in errors:
        assert isinstance(err, openai.APIStatusError), err
        assert err.status_code == 410 and "deleted" in str(err)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="m", prompt="late", max_tokens=2)
    wait_until(lambda: one_worker.model_status("m") is None, 15, "the model to be removed")


def test_a_request_that_crashes_its_backend_fails_after_max_attempts(one_worker: Cluster) -> None:
    one_worker.deploy(
        "m",
        auto_scaling_config={"min_instances": 0, "max_instances": 1, "keep_alive": 30},
        backend_config={"crash_on_prompt": "poison"},
    )
    client = one_worker.client()
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model="m", prompt="poison pill", max_tokens=2, timeout=40)
    assert failed.value.status_code == 502
    assert "2 attempt" in str(failed.value)
    # The crashed instance is replaced and normal requests are served.
    ok = client.completions.create(model="m", prompt="fine", max_tokens=2, timeout=40)
    assert ok.choices[0].text


def test_lora_adapters_are_called_as_base_colon_adapter(one_worker: Cluster) -> None:
    head = one_worker.head
    assert head is not None
    bad = {"model": "m", "lora_adapters": {"a:b": "/x"}}
    refused = httpx.post(f"{head.url}/register", json=bad, timeout=10)
    assert refused.status_code == 400 and "adapter name" in refused.text
    one_worker.deploy("m", lora_adapters={"a1": "/adapters/a1", "a2": "/adapters/a2"})
    client = one_worker.client()

    def ask(model: str, adapter_field: str | None = None) -> str:
        extra = {"lora_adapter_name": adapter_field} if adapter_field else None
        reply = client.completions.create(
            model=model, prompt="one two three", max_tokens=6, seed=1, extra_body=extra
        )
        assert reply.model == (f"m:{adapter_field}" if adapter_field else model)
        return reply.choices[0].text

    base, a1, a2 = ask("m"), ask("m:a1"), ask("m:a2")
    assert len({base, a1, a2}) == 3  # one instance, three ways of speaking
    assert ask("m", adapter_field="a1") == a1
    assert [m.id for m in client.models.list().data] == ["m", "m:a1", "m:a2"]
    with pytest.raises(openai.NotFoundError, match=r"no LoRA adapter 'zz'.*a1, a2"):
        ask("m:zz")
    with pytest.raises(openai.BadRequestError, match="contradicts"):
        ask("m:a1", adapter_field="a2")


def test_token_id_prompts_and_exact_lengths_through_the_head(one_worker: Cluster) -> None:
    """What evaluation harnesses and load tools send: token-id prompts (a dummy token is
    a word of its vocabulary), embedding inputs as ids, and lengths fixed by ignore_eos."""
    one_worker.deploy("m")
    client = one_worker.client()
    ids = [VOCAB.index(w) for w in ("one", "day", "a", "word")]
    as_text = client.completions.create(model="m", prompt="one day a word", max_tokens=6)
    as_ids = client.completions.create(model="m", prompt=ids, max_tokens=6, echo=True)
    assert as_ids.choices[0].text == "one day a word" + as_text.choices[0].text
    batch = client.completions.create(model="m", prompt=[ids, ids[:2]], max_tokens=3)
    assert sorted(c.index for c in batch.choices) == [0, 1]
    assert batch.usage is not None and batch.usage.prompt_tokens == 6
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(model="m", prompt=[1, 10**6], max_tokens=3)
    by_ids = client.embeddings.create(model="m", input=[ids])
    by_text = client.embeddings.create(model="m", input="one day a word")
    assert by_ids.data[0].embedding == by_text.data[0].embedding
    for n in (1, 40, 200):
        reply = client.completions.create(
            model="m", prompt="hi", max_tokens=n, extra_body={"ignore_eos": True}
        )
        assert reply.usage is not None and reply.usage.completion_tokens == n
        assert reply.choices[0].finish_reason == "length"


class Answer(pydantic.BaseModel):
    city: Literal["Paris", "Berlin"]
    population: int = pydantic.Field(ge=1)
    landmarks: list[str]


def test_structured_outputs_and_logprobs_through_the_head(one_worker: Cluster) -> None:
    """The dummy answers a schema with a valid instance, so client code that parses
    answers can be tested against it; logprobs travel through the head untouched."""
    one_worker.deploy("m")
    client = one_worker.client()
    messages: Any = [{"role": "user", "content": "a city"}]
    parsed = client.chat.completions.parse(model="m", messages=messages, response_format=Answer)
    assert isinstance(parsed.choices[0].message.parsed, Answer)
    stream = client.chat.completions.create(
        model="m",
        messages=messages,
        response_format={"type": "json_object"},
        stream=True,
        logprobs=True,
        top_logprobs=1,
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert isinstance(json.loads(text), dict)
    tokens = [
        e.token for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert "".join(tokens) == text


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def test_a_tool_call_round_trip_with_the_sdk(one_worker: Cluster) -> None:
    """The dummy calls a listed tool with valid arguments, then answers the tool's
    result: what client code for tools needs to be tested against."""
    one_worker.deploy("m")
    client = one_worker.client()
    messages: Any = [{"role": "user", "content": "weather in Oslo?"}]
    first = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert call.function.name == "weather" and set(arguments) == {"city", "days"}  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    # Streamed: the call comes as a tool_calls delta the SDK puts together.
    with client.chat.completions.stream(
        model="m", messages=messages[:1], tools=[WEATHER_TOOL], tool_choice="required"
    ) as stream:
        done = stream.get_final_completion()
    assert done.choices[0].message.tool_calls[0].function.name == "weather"  # type: ignore[index]
    assert done.choices[0].finish_reason == "tool_calls"
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(
            model="m",
            messages=messages[:1],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "stocks"}},
        )


def test_the_head_logs_a_line_per_request_and_the_worker_none(cluster: Cluster) -> None:
    head = cluster.start_head()
    worker = cluster.start_worker()
    cluster.deploy("m")
    client = cluster.client()
    client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in head.log.read_text()
    # The worker's clients are heads: a line per /invoke (and per /health probe, each
    # second) cost it a tenth of its CPU per request at the default level. Its failed
    # responses still get theirs.
    assert httpx.get(f"{worker.url}/no-such-path").status_code == 404
    wait_until(lambda: '"GET /no-such-path HTTP/1.1" 404' in worker.log.read_text(), 10, "its line")
    assert "/invoke" not in worker.log.read_text()
    assert "GET /health" not in worker.log.read_text()


def test_an_answer_goes_back_to_its_own_head_unpublished_and_stored(
    cluster: Cluster, redis_url: str
) -> None:
    """A non-streamed answer whose client waits on the dispatching head goes back in the
    worker's /invoke answer: stored in Redis (a lost call still finds it) but not
    published; so do a stream's chunks and its end, in order."""
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m")
    client = cluster.client()
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    client.chat.completions.create(**ask)  # the instance is up
    r = redis.Redis.from_url(redis_url)
    results = r.pubsub(ignore_subscribe_messages=True)
    results.psubscribe("sllm:results:*")
    try:
        wait_until(lambda: r.pubsub_numpat() >= 1, 5, "the subscription")
        answers = [client.chat.completions.create(**ask) for _ in range(5)]
        assert all(a.choices[0].message.content for a in answers)
        assert published(results) == []
        done = [
            key
            for key in r.scan_iter("sllm:task:*")
            if r.hget(key, "state") == b"done" and r.hget(key, "result")
        ]
        assert len(done) >= 6
        for _ in range(3):
            chunks = list(client.chat.completions.create(**ask, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].choices[0].finish_reason == "length"
        assert published(results) == []
        assert len([k for k in r.scan_iter("sllm:task:*") if r.hget(k, "state") == b"done"]) >= 9
    finally:
        results.close()
        r.close()


def published(results: redis.client.PubSub) -> list[Any]:
    """What ``results`` heard within half a second."""
    heard = []
    until = time.monotonic() + 0.5
    while time.monotonic() < until:  # None also stands for a subscription's reply
        if (message := results.get_message(timeout=0.1)) is not None:
            heard.append(message)
    return heard


def test_an_answer_larger_than_a_line_buffer_goes_back_whole(cluster: Cluster) -> None:
    """An answer of megabytes (embeddings of many long vectors) goes back in one /invoke
    line, past aiohttp's line limit (512 KiB): the dispatcher reads it whole, where it
    failed the call (and the client waited for the stored answer's poll)."""
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m", backend_config={"embedding_dim": 4096})
    client = cluster.client()
    inputs = [f"text {i}" for i in range(24)]
    client.embeddings.create(model="m", input="warm")  # the instance is up
    answer = client.embeddings.create(model="m", input=inputs, encoding_format="float")
    assert [len(e.embedding) for e in answer.data] == [4096] * len(inputs)
    assert "Traceback" not in cluster.logs()
