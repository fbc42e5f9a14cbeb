"""The Responses API through real head and worker processes, with the openai SDK."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

WEATHER: Any = {
    "type": "function",
    "name": "weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


class City(pydantic.BaseModel):
    name: str
    people: int


@pytest.fixture
def client(cluster: Cluster) -> openai.OpenAI:
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m")
    return cluster.client()


def test_create_continue_retrieve_and_delete(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="m", input="hello there", instructions="be brief", max_output_tokens=8
    )
    assert first.output_text and first.status in ("completed", "incomplete")
    assert first.usage is not None and 0 < first.usage.output_tokens <= 8
    if first.status == "incomplete":
        assert first.incomplete_details is not None
    assert client.responses.retrieve(first.id).output_text == first.output_text
    # The conversation goes on from the stored response: its input and output come first.
    follow = client.responses.create(model="m", input="and then?", previous_response_id=first.id)
    fresh = client.responses.create(model="m", input="and then?")
    assert follow.previous_response_id == first.id
    assert follow.usage is not None and fresh.usage is not None
    # The dummy counts a word as a token: "user: hello there", "assistant:" and the first
    # answer come before this turn; the first turn's instructions do not (OpenAI's rule).
    first_words = len(first.output_text.split())
    assert follow.usage.input_tokens == fresh.usage.input_tokens + 4 + first_words
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        client.responses.create(model="m", input="x", previous_response_id=first.id)
    unstored = client.responses.create(model="m", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_stream_parse_and_a_tool_round_trip(client: openai.OpenAI) -> None:
    with client.responses.stream(model="m", input="stream me", max_output_tokens=6) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert (
        final.output_text and client.responses.retrieve(final.id).output_text == final.output_text
    )

    parsed = client.responses.parse(model="m", input="a city", text_format=City)
    assert isinstance(parsed.output_parsed, City)

    called = client.responses.create(model="m", input="weather in Oslo?", tools=[WEATHER])
    call = next(item for item in called.output if item.type == "function_call")
    assert call.name == "weather" and "city" in call.arguments
    answered = client.responses.create(
        model="m",
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert answered.output_text and not [i for i in answered.output if i.type == "function_call"]


def test_bad_requests_are_400s_naming_the_field(cluster: Cluster, client: openai.OpenAI) -> None:
    assert cluster.head is not None
    url = f"{cluster.head.url}/v1/responses"
    for body, param in (
        ({"model": "m", "input": [{"type": "computer_call"}]}, "input"),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ):
        resp = httpx.post(url, json=body, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert param in str(resp.json()["error"].get("param")) + resp.json()["error"]["message"]
    assert httpx.post(url, json={"model": "nope", "input": "x"}, timeout=30).status_code == 404
