"""Telling a worker that died under a call (its port refuses) from one that did not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sllm.edge import serving


def states(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    asked: list[str] = []
    seq: Iterator[str] = iter(answers)

    async def port_state(host: str, port: int, timeout: float) -> str:
        asked.append(f"{host}:{port}")
        return next(seq)

    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(serving, "port_state", port_state)
    monkeypatch.setattr(serving.asyncio, "sleep", no_sleep)
    return asked


@pytest.mark.parametrize(
    ("answers", "dead"),
    [
        (["refused"], True),
        # A listening socket torn down under the connect resets it before it refuses.
        (["unknown", "refused"], True),
        (["open", "open", "refused"], True),
        (["open", "open", "open"], False),  # alive: the call was lost another way
        (["unknown", "unknown", "unknown"], False),  # unreachable, not known dead
    ],
)
async def test_a_port_that_refuses_within_the_tries_is_a_dead_worker(
    monkeypatch: pytest.MonkeyPatch, answers: list[str], dead: bool
) -> None:
    asked = states(monkeypatch, answers)
    assert await serving.refuses_connections("http://10.0.0.7:8001") is dead
    assert asked == ["10.0.0.7:8001"] * len(answers)
