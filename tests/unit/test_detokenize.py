"""Incremental detokenization never splits a character and loses no text."""

from __future__ import annotations

import pytest

from sllm.backends.detokenize import IncrementalDecoder
from tests.tiny_models import build_tiny_causal_lm


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    path = build_tiny_causal_lm(tmp_path_factory.mktemp("lm"))
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize(
    "text",
    ["ñandú 北京", "😀 and 🚀 emoji", "café é🙂東 x", "Ωmega ü"],
)
def test_pieces_join_to_the_text_and_never_hold_half_a_character(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text, add_special_tokens=False)
    # Unseen characters are split into byte tokens: decoded alone, they are half characters.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
