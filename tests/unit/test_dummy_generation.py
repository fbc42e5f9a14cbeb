"""The dummy's output is a function of its input, and continues like the original."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sllm.backends.dummy import build
from sllm.backends.dummy_engine import END, DummyEngine, DummyKnobs, embedding, words
from sllm.backends.engine import SamplingParams


def test_same_input_same_output_and_choices_differ() -> None:
    prompt = "user: tell me a story\nassistant:"
    assert words(prompt, 0, None, 30) == words(prompt, 0, None, 30)
    assert words(prompt, 0, None, 30) != words(prompt, 1, None, 30)
    assert words(prompt, 0, 1, 30) != words(prompt, 0, 2, 30)


def test_a_continued_generation_matches_the_uninterrupted_one() -> None:
    prompt = "user: once upon a time\nassistant:"
    full = words(prompt, 0, 7, 40)
    assert len(full) > 6, "pick a prompt whose output is long enough to split"
    head = full[:5]
    rest = words(prompt + " " + " ".join(head), 0, 7, 40 - len(head))
    assert head + rest == full


def test_limit_is_honoured_and_end_word_never_shown() -> None:
    for i in range(50):
        out = words(f"prompt number {i}", 0, None, 12)
        assert len(out) <= 12 and END not in out


async def test_engine_streams_the_same_words() -> None:
    engine = DummyEngine(DummyKnobs())
    params = SamplingParams(max_tokens=10, seed=5)
    pieces = [p.text async for p in engine.generate("hello world", params)]
    assert "".join(pieces) == " ".join(words("hello world", 0, 5, 10))


def test_embeddings_are_unit_vectors_of_the_asked_size() -> None:
    vector = embedding("some text", 40)
    assert len(vector) == 40
    assert math.isclose(sum(x * x for x in vector), 1.0)
    assert embedding("some text", 40) == vector != embedding("other text", 40)


def test_unknown_or_bad_knobs_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="colour"):
        build("m", "i", {"colour": "red"}, Path("."), {})
    with pytest.raises(ValueError, match="ttft"):
        build("m", "i", {"ttft": -1}, Path("."), {})


async def generated(params: SamplingParams, prompt: str) -> list[str]:
    return [p.text async for p in DummyEngine(DummyKnobs()).generate(prompt, params)]


async def test_the_dummy_never_answers_empty_and_gives_exact_lengths() -> None:
    # Prompts whose first draw is END: answered with a word all the same.
    ending = [p for p in (f"p{i}" for i in range(400)) if not words(p, 0, None, 1, floor=0)]
    assert ending, "some prompt must draw END first"
    for prompt in ending[:5]:
        assert len(await generated(SamplingParams(max_tokens=4), prompt)) >= 1
    short = [p for p in (f"q{i}" for i in range(400)) if len(words(p, 0, None, 50)) < 10]
    assert short, "some prompt must end early"
    for prompt in short[:5]:
        assert len(await generated(SamplingParams(max_tokens=30, ignore_eos=True), prompt)) == 30
        at_least = await generated(SamplingParams(max_tokens=30, min_tokens=12), prompt)
        assert 12 <= len(at_least) <= 30
    assert await generated(SamplingParams(max_tokens=0), "x") == []
