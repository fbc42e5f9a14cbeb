"""The transformers backend as the worker runs it, on a tiny random model built here."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pydantic
import pytest

from sllm.backends.base import LaunchSpec
from sllm.backends.registry import get_backend
from sllm.client.launcher import Child, free_port, spawn, wait_healthy
from tests.tiny_models import build_tiny_causal_lm, build_tiny_encoder, build_tiny_lora

pytestmark = pytest.mark.timeout(180)


def start(
    tmp_path: Path, model_dir: Path, lora: dict[str, str] | None = None, **knobs: Any
) -> Child:
    port = free_port()
    spec = LaunchSpec(
        instance_id="tf-1",
        model="tiny",
        port=port,
        backend_config={"pretrained_model_name_or_path": str(model_dir), **knobs},
        lora_adapters=lora or {},
        storage_path=tmp_path / "cache",
    )
    argv = get_backend("transformers").command(spec)
    child = spawn(
        "transformers", argv, tmp_path / f"backend-{port}.log", f"http://127.0.0.1:{port}"
    )
    wait_healthy(child, 120)
    return child


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    tmp = tmp_path_factory.mktemp("tf")
    child = start(tmp, build_tiny_causal_lm(tmp / "lm"), default_max_tokens=12)
    yield child
    child.stop()


@pytest.fixture
def sdk(lm: Child) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{lm.url}/v1", api_key="none", max_retries=0) as client:
        yield client


def tokenizer(path: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def model_dir(child: Child) -> Path:
    """The model directory a backend was started with (from its --config)."""
    return Path(child.popen.args[child.popen.args.index("--config") + 1].split('"')[3])


MESSAGES: Any = [{"role": "user", "content": "hello world"}]


def test_greedy_chat_streams_what_it_answers(sdk: openai.OpenAI) -> None:
    chat = sdk.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0
    )
    text = chat.choices[0].message.content or ""
    assert chat.system_fingerprint == "tf-1"
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 10
    finish = chat.choices[0].finish_reason
    assert finish == ("length" if chat.usage.completion_tokens == 10 else "stop")
    stream = sdk.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens


def test_usage_is_counted_with_the_tokenizer(sdk: openai.OpenAI, lm: Child) -> None:
    prompt = "the quick brown fox"
    reply = sdk.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0)
    assert reply.usage is not None
    path = model_dir(lm)
    expected = len(tokenizer(path).encode(prompt, add_special_tokens=False))
    assert reply.usage.prompt_tokens == expected
    assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"


def test_stop_strings_are_cut_exactly(sdk: openai.OpenAI) -> None:
    full = sdk.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert len(text) > 4, text
    stop = text[2:4]
    cut = sdk.completions.create(
        model="tiny", prompt="hello", max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_and_n_choices_all_finish(sdk: openai.OpenAI) -> None:
    def ask(i: int) -> int:
        reply = sdk.completions.create(
            model="tiny", prompt=f"hello {i}", max_tokens=8, n=2, temperature=0.8, top_p=0.9
        )
        assert sorted(c.index for c in reply.choices) == [0, 1]
        assert reply.usage is not None
        return reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(ask, range(8)))
    assert all(0 < t <= 16 for t in tokens)


def test_what_the_backend_cannot_do_is_a_clear_400(lm: Child) -> None:
    base = {"model": "tiny", "messages": MESSAGES}
    resp = httpx.post(
        f"{lm.url}/v1/chat/completions", json={**base, "max_tokens": 100000}, timeout=30
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "max_tokens"
    emb = httpx.post(f"{lm.url}/v1/embeddings", json={"model": "tiny", "input": "x"}, timeout=30)
    assert emb.status_code == 400 and "embedding" in emb.json()["error"]["message"]


def test_continuous_batching_serves_every_sampling_field(sdk: openai.OpenAI) -> None:
    """Seeds, penalties, min_p, top_k and repetition_penalty: what continuous batching
    cannot sample goes through the static batcher beside it, in one process."""

    def ask(**extra: Any) -> list[str]:
        reply = sdk.completions.create(
            model="tiny", prompt="hello", max_tokens=12, n=2, temperature=1.0, **extra
        )
        return [c.text for c in sorted(reply.choices, key=lambda c: c.index)]

    seeded = ask(seed=7)
    assert ask(seed=7) == seeded and seeded[0] != seeded[1]
    for extra in (
        {"frequency_penalty": 2.0, "presence_penalty": 0.5},
        {"min_p": 0.05, "top_k": 5, "repetition_penalty": 1.3},
    ):
        assert all(ask(seed=7, extra_body=extra)), extra
    # top_k 1 is greedy, whatever the temperature.
    greedy = sdk.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0)
    assert ask(extra_body={"top_k": 1}) == [greedy.choices[0].text] * 2


def test_token_id_prompts_answer_as_their_text(sdk: openai.OpenAI, lm: Child) -> None:
    path = model_dir(lm)
    ids = tokenizer(path).encode("the quick brown fox", add_special_tokens=False)
    text = sdk.completions.create(
        model="tiny", prompt="the quick brown fox", max_tokens=6, temperature=0
    )
    by_ids = sdk.completions.create(
        model="tiny", prompt=ids, max_tokens=6, temperature=0, echo=True
    )
    assert by_ids.choices[0].text == "the quick brown fox" + text.choices[0].text
    batch = sdk.completions.create(model="tiny", prompt=[ids, ids[:2]], max_tokens=2, temperature=0)
    assert batch.usage is not None and batch.usage.prompt_tokens == len(ids) + 2
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary") as refused:
        sdk.completions.create(model="tiny", prompt=[1, 10**6], max_tokens=2)
    assert refused.value.body["param"] == "prompt"  # type: ignore[index]


def test_logprobs_are_the_models_own(sdk: openai.OpenAI, lm: Child) -> None:
    """Greedy tokens' log-probabilities and an echoed prompt's, against one forward pass
    of the model over the same ids; under continuous batching such a request runs in the
    static batcher beside it, as the stream does."""
    import torch
    from transformers import AutoModelForCausalLM

    path = model_dir(lm)
    tok = tokenizer(path)
    reply = sdk.completions.create(
        model="tiny",
        prompt="the quick brown fox",
        max_tokens=5,
        temperature=0,
        logprobs=3,
        echo=True,
    )
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    ids = tok.encode("the quick brown fox", add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        full = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0].tolist()
        expected = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    out = full[len(ids) :]
    assert lp.tokens == [tok.decode([t]) for t in full]
    assert lp.token_logprobs[0] is None
    for place, token in enumerate(full[1:], start=1):
        assert lp.token_logprobs[place] == pytest.approx(
            float(expected[place - 1, token]), abs=1e-4
        )
    for place in range(len(ids), len(full)):
        # Greedy: each output token is the likeliest, first among its alternatives.
        top = lp.top_logprobs[place]
        assert top is not None and len(top) >= 3
        assert max(top.values()) == pytest.approx(lp.token_logprobs[place], abs=1e-6)
    assert len(out) == 5
    chat = dict(
        model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    whole = sdk.chat.completions.create(**chat)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 for e in content)
    streamed = [
        e
        for c in sdk.chat.completions.create(**chat, stream=True)  # type: ignore[call-overload]
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)


class Verdict(pydantic.BaseModel):
    label: Literal["yes", "no", "maybe"]
    sure: bool
    word: str = pydantic.Field(max_length=4)
    count: int = pydantic.Field(ge=1, le=9)


def test_structured_outputs_parse_and_validate_however_random_the_model(
    sdk: openai.OpenAI,
) -> None:
    """A random model's answers held to a schema by the grammar engine: every answer
    parses and validates, through the SDK's parse with a pydantic model too."""
    for seed in range(3):
        reply = sdk.chat.completions.parse(
            model="tiny",
            messages=MESSAGES,
            response_format=Verdict,
            max_tokens=60,
            temperature=1.0,
            seed=seed,
        )
        assert isinstance(reply.choices[0].message.parsed, Verdict)
    loose = sdk.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_object"},
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in loose if c.choices)
    # Within 40 tokens an open object may not close: what came is its valid beginning.
    assert text.startswith("{")
    with pytest.raises(openai.BadRequestError, match="cannot be enforced") as refused:
        sdk.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "strin"}},
            },
        )
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]


PICK: Any = {
    "type": "function",
    "function": {
        "name": "pick",
        "parameters": {
            "type": "object",
            "properties": {"colour": {"enum": ["red", "blue"]}, "n": {"type": "boolean"}},
            "required": ["colour", "n"],
        },
    },
}


def test_forced_tool_calls_are_valid_calls_and_results_feed_back(sdk: openai.OpenAI) -> None:
    """A random model, made to call: the grammar holds it to a listed tool with valid
    arguments. Its template knows no tools: sllm tells the model of them, and of the
    call and result when they come back."""
    for choice in ("required", {"type": "function", "function": {"name": "pick"}}):
        reply = sdk.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            tools=[PICK],
            tool_choice=choice,  # type: ignore[arg-type]
            # The tiny tokenizer writes the call in about 50 tokens.
            max_tokens=100,
            temperature=1.0,
        )
        assert reply.choices[0].finish_reason == "tool_calls", reply
        call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "pick"  # type: ignore[union-attr]
        arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
        assert arguments["colour"] in ("red", "blue") and isinstance(arguments["n"], bool)
    back: Any = [
        *MESSAGES,
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "done"},
    ]
    answer = sdk.chat.completions.create(
        model="tiny", messages=back, tools=[PICK], max_tokens=8, temperature=0
    )
    assert answer.usage is not None and answer.usage.prompt_tokens > 0


def eos_first(model_dir: Path, prompt: str) -> Path:
    """The model, told that the token it greedily puts first after ``prompt`` ends a
    sequence: its greedy answer to ``prompt`` is then empty."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer(model_dir).encode(prompt, add_special_tokens=False)
    with torch.inference_mode():
        first = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": first}))
    return model_dir


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_min_tokens_and_ignore_eos_give_exact_lengths(tmp_path: Path, batching: str) -> None:
    child = start(
        tmp_path, eos_first(build_tiny_causal_lm(tmp_path / "lm"), "hello"), batching=batching
    )
    try:
        with openai.OpenAI(base_url=f"{child.url}/v1", api_key="x", max_retries=0) as client:

            def ask(**extra: Any) -> tuple[int, str | None]:
                reply = client.completions.create(
                    model="tiny", prompt="hello", max_tokens=9, temperature=0, extra_body=extra
                )
                assert reply.usage is not None
                return reply.usage.completion_tokens, reply.choices[0].finish_reason

            assert ask() == (0, "stop")
            tokens, _ = ask(min_tokens=4)
            assert tokens >= 4
            assert ask(ignore_eos=True) == (9, "length")
    finally:
        child.stop()


def test_a_missing_model_fails_the_start_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no model at"):
        start(tmp_path, tmp_path / "nowhere.gguf")


def test_encoder_embeddings_match_a_direct_computation(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel

    path = build_tiny_encoder(tmp_path / "enc")
    child = start(tmp_path, path)
    texts = ["hello world", "the quick brown fox jumps"]
    try:
        with openai.OpenAI(base_url=f"{child.url}/v1", api_key="x", max_retries=0) as client:
            got = client.embeddings.create(model="tiny", input=texts)
            # The same inputs as the tokenizer's ids (with its special tokens), as
            # LangChain's embeddings send them; an id outside the vocabulary is a 400.
            ids = tokenizer(path)(texts)["input_ids"]
            by_ids = client.embeddings.create(model="tiny", input=ids)
            with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
                client.embeddings.create(model="tiny", input=[[1, 10**6]])
    finally:
        child.stop()
    for text, token in zip(got.data, by_ids.data, strict=True):
        assert text.embedding == pytest.approx(token.embedding, abs=1e-5)
    tok = tokenizer(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    for row, data in zip(expected, got.data, strict=True):
        vector = torch.tensor(data.embedding)
        assert torch.nn.functional.cosine_similarity(row, vector, dim=0) > 1 - 1e-5
    assert got.usage.prompt_tokens == int(batch["attention_mask"].sum())


# -- LoRA adapters and static batching ------------------------------------------------


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lora")
    base = build_tiny_causal_lm(tmp / "base")
    return {
        "base": base,
        "a1": build_tiny_lora(base, tmp / "a1", seed=1),
        "a2": build_tiny_lora(base, tmp / "a2", seed=2),
    }


@pytest.fixture(scope="module")
def lora_lm(
    lora_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Child]:
    adapters = {"a1": str(lora_dirs["a1"]), "a2": str(lora_dirs["a2"])}
    child = start(tmp_path_factory.mktemp("lora-run"), lora_dirs["base"], lora=adapters)
    yield child
    child.stop()


def peft_greedy(lora_dirs: dict[str, Path], adapter: str, prompt: str, tokens: int) -> str:
    """What peft itself generates for ``prompt`` with ``adapter``, greedily."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = tokenizer(lora_dirs["base"])
    base = AutoModelForCausalLM.from_pretrained(lora_dirs["base"])
    model = PeftModel.from_pretrained(base, lora_dirs[adapter]).eval()
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=tok.pad_token_id,
        )
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_a_lora_adapter_answers_as_peft_does_and_unlike_the_base(
    lora_lm: Child, lora_dirs: dict[str, Path]
) -> None:
    prompt = "the quick brown fox"
    with openai.OpenAI(base_url=f"{lora_lm.url}/v1", api_key="x", max_retries=0) as client:

        def ask(model: str, **extra: Any) -> str:
            reply = client.completions.create(
                model=model, prompt=prompt, max_tokens=10, temperature=0, **extra
            )
            return reply.choices[0].text

        with_a1 = ask("tiny:a1")
        # The server holds back bytes that never complete a character; decode shows them.
        assert with_a1 == peft_greedy(lora_dirs, "a1", prompt, 10).rstrip("\ufffd")
        assert with_a1 != ask("tiny")
        assert ask("tiny", extra_body={"lora_adapter_name": "a1"}) == with_a1
        assert ask("tiny:a2") != with_a1
        models = [m.id for m in client.models.list()]
        assert models == ["tiny", "tiny:a1", "tiny:a2"]
        reply = client.completions.create(model="tiny:a1", prompt=prompt, max_tokens=2)
        assert reply.model == "tiny:a1"


def test_requests_for_different_adapters_share_batches_and_keep_their_answers(
    lora_lm: Child,
) -> None:
    models = ["tiny", "tiny:a1", "tiny:a2"] * 4
    with openai.OpenAI(base_url=f"{lora_lm.url}/v1", api_key="x", max_retries=0) as client:

        def ask(model: str) -> str:
            reply = client.completions.create(
                model=model, prompt="hello world", max_tokens=8, temperature=0
            )
            return reply.choices[0].text

        alone = {m: ask(m) for m in set(models)}
        with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
            together = list(pool.map(ask, models))
    assert together == [alone[m] for m in models]
    assert len(set(alone.values())) == 3


def test_unknown_adapters_are_404_and_contradictions_400(lora_lm: Child) -> None:
    url = f"{lora_lm.url}/v1/completions"
    missing = httpx.post(url, json={"model": "tiny:zz", "prompt": "x"}, timeout=30)
    assert missing.status_code == 404 and "a1, a2" in missing.json()["error"]["message"]
    both = {"model": "tiny:a1", "lora_adapter_name": "a2", "prompt": "x"}
    clash = httpx.post(url, json=both, timeout=30)
    assert clash.status_code == 400 and clash.json()["error"]["param"] == "lora_adapter_name"


def test_static_batching_serves_seeds_and_penalties(tmp_path: Path) -> None:
    child = start(tmp_path, build_tiny_causal_lm(tmp_path / "lm"), batching="static")
    try:
        with openai.OpenAI(base_url=f"{child.url}/v1", api_key="x", max_retries=0) as client:

            def ask(seed: int, **extra: Any) -> list[str]:
                reply = client.completions.create(
                    model="tiny",
                    prompt="hello",
                    max_tokens=12,
                    n=2,
                    temperature=1.0,
                    seed=seed,
                    **extra,
                )
                return [c.text for c in sorted(reply.choices, key=lambda c: c.index)]

            first = ask(7)
            assert ask(7) == first  # a seed reproduces, whatever else is batched
            assert first[0] != first[1]  # the n choices of one request differ
            assert ask(8) != first
            # What the penalties do is tested on sample_row; here: they are served.
            penalised = ask(7, frequency_penalty=2.0, presence_penalty=0.5)
            assert len(penalised) == 2 and all(penalised)
    finally:
        child.stop()


def test_the_models_generation_config_sets_the_sampling_a_request_leaves_out(
    tmp_path: Path,
) -> None:
    model_dir = build_tiny_causal_lm(tmp_path / "lm")
    # Greedy by its top_p (the most likely token alone is kept).
    (model_dir / "generation_config.json").write_text(
        '{"do_sample": true, "top_p": 0.000001, "top_k": 5, "eos_token_id": 2}'
    )
    child = start(tmp_path, model_dir, default_max_tokens=12)
    try:
        health = httpx.get(f"{child.url}/health", timeout=10).json()
        assert health["sampling_defaults"] == {"top_p": 0.000001, "top_k": 5}
        with openai.OpenAI(base_url=f"{child.url}/v1", api_key="none", max_retries=0) as sdk:

            def ask(**extra: Any) -> str:
                reply = sdk.completions.create(model="tiny", prompt="hello", max_tokens=12, **extra)
                return reply.choices[0].text

            greedy = ask(temperature=0)
            assert [ask() for _ in range(3)] == [greedy] * 3
            # A request's own value wins: a random model's sampled answers differ.
            assert len({ask(top_p=1.0) for _ in range(4)}) > 1
    finally:
        child.stop()
