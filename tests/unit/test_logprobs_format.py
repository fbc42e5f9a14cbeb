"""Log-probabilities in OpenAI's chat and legacy completion shapes."""

from __future__ import annotations

from sllm.backends import logprobs_format
from sllm.backends.engine import TokenLogprob

ENTRIES = [
    TokenLogprob("Hel", None),
    TokenLogprob("lo", -0.5, (("lo", -0.5), ("p", -1.5))),
    TokenLogprob(" é", float("-inf"), (("!", -0.1),)),
]


def test_completion_shape_offsets_and_floor() -> None:
    body, end = logprobs_format.completion(ENTRIES, 10)
    assert body == {
        "tokens": ["Hel", "lo", " é"],
        "token_logprobs": [None, -0.5, -9999.0],
        "top_logprobs": [None, {"lo": -0.5, "p": -1.5}, {" é": -9999.0, "!": -0.1}],
        "text_offset": [10, 13, 15],
    }
    assert end == 17


def test_chat_shape_with_bytes() -> None:
    content = logprobs_format.chat(ENTRIES[1:])["content"]
    assert content[0] == {
        "token": "lo",
        "logprob": -0.5,
        "bytes": [108, 111],
        "top_logprobs": [
            {"token": "lo", "logprob": -0.5, "bytes": [108, 111]},
            {"token": "p", "logprob": -1.5, "bytes": [112]},
        ],
    }
    assert content[1]["bytes"] == [32, 195, 169] and content[1]["logprob"] == -9999.0
