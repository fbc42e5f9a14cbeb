"""The dummy holds a context like a model: a huge max_tokens is a 400, not a generation
that runs to the request's deadline (some word chains never draw END)."""

from __future__ import annotations

import pytest

from sllm.backends.dummy_engine import DummyEngine, DummyKnobs
from sllm.backends.engine import SamplingParams
from sllm.edge.errors import RequestError

pytestmark = pytest.mark.timeout(30)


def test_prompt_plus_max_tokens_past_the_context_is_refused() -> None:
    engine = DummyEngine(DummyKnobs(context_length=100))
    engine.check(40, SamplingParams(max_tokens=60))
    with pytest.raises(RequestError, match="context of 100 tokens") as err:
        engine.check(40, SamplingParams(max_tokens=61))
    assert err.value.param == "max_tokens" and err.value.status == 400


def test_the_default_limit_leaves_room_in_the_context() -> None:
    engine = DummyEngine(DummyKnobs(context_length=100, default_max_tokens=16))
    assert engine.default_max_tokens(10) == 16
    assert engine.default_max_tokens(95) == 5
    assert engine.default_max_tokens(500) == 1  # then check() refuses the prompt
