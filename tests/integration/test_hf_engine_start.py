"""How the transformers engine starts its batching, in this process, on a tiny random
model: continuous batching with the tokenizer loaded beside its start, static batching
where continuous fails under 'auto', a clear failure under 'continuous', and nothing
left running when the tokenizer cannot load."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sllm.backends.engine import SamplingParams
from sllm.backends.hf_engine import TransformersEngine
from sllm.backends.transformers_knobs import TransformersKnobs
from tests.tiny_models import build_tiny_causal_lm

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm")


@pytest.fixture
def engines() -> Iterator[list[TransformersEngine]]:
    built: list[TransformersEngine] = []
    yield built
    for engine in built:
        engine.close()


def build(
    lm: Path, cache: Path, engines: list[TransformersEngine], **knobs: Any
) -> TransformersEngine:
    engine = TransformersEngine(
        TransformersKnobs(pretrained_model_name_or_path=str(lm), kv_cache_tokens=256, **knobs),
        cache,
    )
    engines.append(engine)
    return engine


def greedy(engine: TransformersEngine, max_tokens: int = 6) -> str:
    async def run() -> str:
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        return "".join([piece.text async for piece in engine.generate("hello world", params)])

    return asyncio.run(asyncio.wait_for(run(), 60))


def test_continuous_batching_answers_as_static_batching_does(
    lm: Path, tmp_path: Path, engines: list[TransformersEngine]
) -> None:
    continuous = build(lm, tmp_path, engines)
    assert continuous.manager is not None and continuous.batcher is None
    # The tokenizer came from the stored copy the weights were loaded from.
    assert Path(continuous.tokenizer.name_or_path).parent == tmp_path / "store"
    static = build(lm, tmp_path, engines, batching="static")
    assert static.batcher is not None and static.manager is None
    assert greedy(continuous) == greedy(static) != ""


@pytest.mark.parametrize("where", ["_start_continuous", "_warm_up"])
def test_auto_falls_back_to_static_batching_where_continuous_fails(
    lm: Path,
    tmp_path: Path,
    engines: list[TransformersEngine],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    reference = greedy(build(lm, tmp_path, engines, batching="static"))

    def broken(self: TransformersEngine, *args: Any) -> None:
        # At _warm_up the manager has started: the fallback must stop it.
        raise RuntimeError("no continuous batching here")

    monkeypatch.setattr(TransformersEngine, where, broken)
    threads = {t.ident for t in threading.enumerate()}
    engine = build(lm, tmp_path, engines)
    assert engine.batcher is not None and engine.manager is None
    assert greedy(engine) == reference
    started = [t for t in threading.enumerate() if t.ident not in threads]
    assert len(started) <= 1, started  # the static batcher's, no manager's
    threads = {t.ident for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="no continuous batching here"):
        build(lm, tmp_path, engines, batching="continuous")
    assert [t.name for t in threading.enumerate() if t.ident not in threads] == []


def test_a_tokenizer_that_cannot_load_stops_the_started_batching(
    lm: Path, tmp_path: Path, engines: list[TransformersEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    build(lm, tmp_path, engines)  # stored, and whatever threads a first engine leaves
    threads = {t.ident for t in threading.enumerate()}

    def unreadable(self: TransformersEngine, model: Any) -> None:
        raise OSError("tokenizer.json: unreadable")

    monkeypatch.setattr(TransformersEngine, "_load_tokenizer", unreadable)
    with pytest.raises(OSError, match="unreadable"):
        build(lm, tmp_path, engines)
    assert [t.name for t in threading.enumerate() if t.ident not in threads] == []
