"""LangChain's OpenAI clients against a real cluster: ChatOpenAI (invoke, stream,
structured output, a tool round trip, the Responses API) on the dummy backend and on a
tiny real model, and OpenAIEmbeddings sending token ids, as it does by default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest

from tests.e2e.conftest import Cluster
from tests.tiny_models import build_tiny_causal_lm, build_tiny_encoder

langchain_openai = pytest.importorskip("langchain_openai")
tiktoken = pytest.importorskip("tiktoken")

from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Verdict(pydantic.BaseModel):
    """A short verdict."""

    label: Literal["yes", "no"]
    sure: bool


@tool
def pick(colour: Literal["red", "blue"]) -> str:
    """Pick a colour."""
    return f"picked {colour}"


def deploy_tiny_lm(cluster: Cluster, tmp_path: Path) -> None:
    cluster.deploy(
        "m",
        backend="transformers",
        backend_config={
            "pretrained_model_name_or_path": str(build_tiny_causal_lm(tmp_path / "lm"))
        },
        startup_timeout=120,
    )


@pytest.fixture(params=["dummy", "tiny"])
def chat_cluster(request: pytest.FixtureRequest, cluster: Cluster, tmp_path: Path) -> Cluster:
    cluster.start_head()
    cluster.start_worker()
    if request.param == "dummy":
        cluster.deploy("m")
    else:
        deploy_tiny_lm(cluster, tmp_path)
    return cluster


def chat_model(cluster: Cluster, **kwargs: Any) -> Any:
    assert cluster.head is not None
    return langchain_openai.ChatOpenAI(
        base_url=f"{cluster.head.url}/v1",
        api_key="unused",
        model="m",
        max_retries=0,
        timeout=120,
        **kwargs,
    )


def test_chat_openai_invoke_stream_structured_output_and_tools(chat_cluster: Cluster) -> None:
    llm = chat_model(chat_cluster, max_tokens=60, temperature=0)
    answer = llm.invoke("hello there")
    assert isinstance(answer.content, str) and answer.content
    streamed = "".join(str(chunk.content) for chunk in llm.stream("hello there"))
    assert streamed == answer.content

    question = "Is the sky blue? Answer as JSON with label and sure."
    verdict = llm.with_structured_output(Verdict, method="json_schema").invoke(question)
    assert isinstance(verdict, Verdict)
    # JSON mode holds the answer to JSON, not to the schema (the prompt asks for that).
    loose = llm.with_structured_output(Verdict.model_json_schema(), method="json_mode")
    assert isinstance(loose.invoke(question), dict)

    with_tools = llm.bind_tools([pick], tool_choice="pick")
    asked = [HumanMessage("pick a colour")]
    called = with_tools.invoke(asked)
    assert called.tool_calls and called.tool_calls[0]["name"] == "pick"
    result = pick.invoke(called.tool_calls[0])
    assert isinstance(result, ToolMessage)
    final = llm.bind_tools([pick]).invoke([*asked, called, result])
    assert isinstance(final.content, str)

    responses = chat_model(chat_cluster, max_tokens=20, temperature=0, use_responses_api=True)
    assert responses.invoke("hello there").text


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> character map of byte-level BPE (GPT-2's), to read its vocabulary."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiktoken_of(tokenizer_dir: Path) -> Any:
    """The model's own tokenizer as a tiktoken encoding: LangChain tokenizes with
    tiktoken, whose files cannot be downloaded here, and sends the ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    decode = {c: b for b, c in bytes_to_unicode().items()}
    specials = set(tokenizer.all_special_tokens)
    ranks = {
        bytes(decode[c] for c in token): token_id
        for token, token_id in tokenizer.get_vocab().items()
        if token not in specials and all(c in decode for c in token)
    }
    return tiktoken.Encoding(
        name="cl100k_base",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={},
    )


@pytest.fixture
def local_tiktoken(tmp_path: Path) -> Iterator[Path]:
    encoder = build_tiny_encoder(tmp_path / "enc")
    registry = tiktoken.registry
    saved = registry.ENCODINGS.get("cl100k_base")
    registry.ENCODINGS["cl100k_base"] = tiktoken_of(encoder)
    yield encoder
    if saved is None:
        registry.ENCODINGS.pop("cl100k_base", None)
    else:
        registry.ENCODINGS["cl100k_base"] = saved


def test_openai_embeddings_send_token_ids_and_get_the_texts_vectors(
    cluster: Cluster, local_tiktoken: Path
) -> None:
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy(
        "minilm",
        backend="transformers",
        backend_config={"pretrained_model_name_or_path": str(local_tiktoken)},
        startup_timeout=120,
    )
    assert cluster.head is not None
    embeddings = langchain_openai.OpenAIEmbeddings(
        base_url=f"{cluster.head.url}/v1", api_key="unused", model="minilm", max_retries=0
    )
    assert embeddings.check_embedding_ctx_length  # the default: it sends token ids
    texts = ["hello world", "the quick brown fox"]
    by_ids = embeddings.embed_documents(texts)
    by_text = cluster.client().embeddings.create(model="minilm", input=texts)
    # The ids are the tokenizer's without its special tokens: close to the text's vectors,
    # not equal (the model reads [CLS] and [SEP] around a text).
    for vector, data in zip(by_ids, by_text.data, strict=True):
        assert len(vector) == len(data.embedding)
        dot = sum(a * b for a, b in zip(vector, data.embedding, strict=True))
        assert dot > 0.5
    assert embeddings.embed_query("hello world") == pytest.approx(by_ids[0], abs=1e-5)
