"""The worker's /invoke proxy with a real dummy backend and a real redis-server: where a
non-streamed outcome goes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sllm.kv.keys import Keys
from sllm.kv.store import Store
from sllm.messages import ResultMessage
from sllm.worker.instance_manager import InstanceManager
from sllm.worker.proxy import InvokeBody, Proxy
from tests.integration.test_instance_manager import Recorder
from tests.integration.test_task_store import (
    MODEL,
    claim_and_stamp,
    deploy_with_ready_instance,
    new_task,
)

pytestmark = pytest.mark.timeout(60)

CHANNEL = "t:results:h"  # new_task's reply_to


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, Keys("t"), patient=False)
    await s.client.flushall()
    yield s
    await s.close()


@pytest.fixture
async def proxy(store: Store, tmp_path: Path) -> AsyncIterator[Proxy]:
    recorder = Recorder()
    manager = InstanceManager(tmp_path / "logs", recorder)
    await manager.start(
        "i1",
        model=MODEL,
        backend="dummy",
        backend_config={},
        num_gpus=0,
        lora_adapters={},
        startup_timeout=20,
    )
    await recorder.wait_for("i1", "ready")
    p = Proxy(store, manager)
    yield p
    await p.aclose()
    await manager.stop_all(grace=1.0)


async def run_attempt(store: Store, proxy: Proxy, task_id: str, *, inline: bool) -> str:
    """One claimed attempt of a new completion through the proxy: its answer's line."""
    task = new_task(task_id)
    await store.tasks.enqueue(task, 60)
    _, claim = await claim_and_stamp(store)
    assert claim is not None
    call = InvokeBody(
        task_id=task_id,
        attempt=claim.attempt,
        model=MODEL,
        instance_id="i1",
        endpoint=task.endpoint,
        body=task.body_json,
        reply_to=task.reply_to,
        deadline=task.deadline,
        inline=inline,
    )
    port = proxy.instances.port("i1")
    assert port is not None
    outcome = await proxy._forward(call, port)
    await asyncio.gather(*proxy._background)
    return outcome.line().decode()


async def published(store: Store, during: asyncio.Future[str]) -> tuple[str, list[str]]:
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    line = await during
    messages = []
    for _ in range(10):
        msg = await pubsub.get_message(timeout=0.1)
        if msg is not None:
            messages.append(msg["data"])
    await pubsub.aclose()
    return line, messages


async def test_an_inline_outcome_is_answered_and_stored_not_published(
    store: Store, proxy: Proxy
) -> None:
    await deploy_with_ready_instance(store)
    for task_id, inline in (("a", True), ("b", False)):
        attempt = run_attempt(store, proxy, task_id, inline=inline)
        line, messages = await published(store, asyncio.ensure_future(attempt))
        answer = json.loads(line)
        state, stored = await store.tasks.state_and_result(task_id)
        assert state == "done" and stored is not None
        assert ResultMessage.decode(stored).data["object"] == "text_completion"
        if inline:
            # The message goes back to the dispatcher; Redis stores it behind the answer.
            assert answer == {"outcome": "done", "error": "", "result": stored}
            assert messages == []
        else:
            assert answer == {"outcome": "done", "error": ""}
            assert messages == [stored]
    assert (await store.registry.get_instance("i1")).outstanding == 0  # type: ignore[union-attr]
