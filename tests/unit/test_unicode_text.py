"""Lone surrogates are found wherever they sit in a request body, and named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sllm.edge.unicode_text import first_invalid


def parsed(text: str) -> Any:
    return json.loads(text)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            '{"messages": [{"content": "ok"}, {"content": [{"text": "\\udfff"}]}]}',
            "messages.1.content.0.text",
        ),
        (
            '{"tools": [{"parameters": {"properties": {"\\ud800x": {}}}}]}',
            "tools.0.parameters.properties.'\\ud800x'",
        ),
        ('"\\ud800"', ""),
    ],
)
def test_the_first_invalid_string_or_key_is_named(body: str, where: str) -> None:
    assert first_invalid(parsed(body)) == where


@pytest.mark.parametrize(
    "body", ['{"a": "caf\\u00e9 \\ud83d\\ude00", "b": [1, 2.5, null, true]}', '"plain"', "[]"]
)
def test_valid_text_passes(body: str) -> None:
    assert first_invalid(parsed(body)) is None
