"""Storing a model ahead of its first start, as the worker does on the head's request:
one child per source at a time, a result the heartbeat learns of, a failure logged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sllm.store.tiers import ModelCache
from sllm.worker.store_ahead import StoreAhead
from tests.tiny_models import build_tiny_causal_lm

pytestmark = pytest.mark.timeout(120)


async def test_a_model_is_stored_once_and_reported(tmp_path: Path) -> None:
    source = str(build_tiny_causal_lm(tmp_path / "lm"))
    stored = asyncio.Event()
    ahead = StoreAhead(tmp_path / "models", tmp_path / "logs", stored.set)
    assert ahead.request(source, "auto", False)
    assert not ahead.request(source, "auto", False)  # already being stored
    assert ahead.storing() == [source]
    await asyncio.wait_for(stored.wait(), 90)
    [entry] = ModelCache(tmp_path / "models", 0).entries()
    assert (entry.tier, entry.sources) == ("disk", (source,))
    await ahead.close()


async def test_a_source_that_cannot_be_stored_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored = asyncio.Event()
    ahead = StoreAhead(tmp_path / "models", tmp_path / "logs", stored.set)
    with caplog.at_level(logging.WARNING, logger="sllm.worker.store_ahead"):
        assert ahead.request(str(tmp_path / "missing"), "auto", False)
        await asyncio.wait_for(asyncio.gather(*ahead._running.values()), 90)
        # Never read as an option of `sllm store save`.
        assert ahead.request("--version", "auto", False)
        await asyncio.wait_for(asyncio.gather(*ahead._running.values()), 90)
    assert not stored.is_set()
    assert caplog.text.count("failed (exit 1)") == 2
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("store-*.log")}
    assert "missing" in "".join(logs.values())
    assert "store---version.log" in logs  # stored as a path, not run as an option
