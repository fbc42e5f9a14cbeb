"""The head's result subscription against a real redis-server whose connections are cut."""

from __future__ import annotations

import asyncio
from typing import Any

import redis as redis_sync

from sllm.edge.messages import ResultMessage, encode_chunks
from sllm.kv.bus import RESYNC, ResultBus
from sllm.kv.keys import Keys
from sllm.kv.store import Store


async def test_a_cut_subscription_resyncs_its_listeners_and_goes_on(redis_url: str) -> None:
    """Messages published while the subscription is down are lost without a word, so every
    listener must hear RESYNC after the reconnect, however redis-py reconnects."""
    store = Store.connect(redis_url, Keys("bus"), patient=True)
    bus = ResultBus(store.client, store.keys, "h1")
    control: list[dict[str, Any]] = []
    bus.on_control(control.append)
    await bus.start()
    killer = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        queue = bus.listen("t1")
        # (>= 1: the session's server may hold another test's subscription)
        assert killer.client_kill_filter(_type="pubsub") >= 1
        assert await asyncio.wait_for(queue.get(), 10) == RESYNC
        # Control events may have been lost too: their handlers hear it (claim loops
        # waiting for a 'queued' look again).
        for _ in range(40):
            if control:
                break
            await asyncio.sleep(0.05)
        assert {"type": "resync"} in control

        message = ResultMessage(task="t1", attempt=0, seq=0, kind="chunk", data={"n": 1})
        for _ in range(50):  # until the resubscribed channel hears it
            if killer.publish(bus.channel, message.encode()):
                break
            await asyncio.sleep(0.1)
        got = await asyncio.wait_for(queue.get(), 10)
        assert isinstance(got, ResultMessage) and got.data == {"n": 1}
    finally:
        killer.close()
        await bus.stop()
        await store.close()


async def test_chunks_sent_as_one_message_reach_their_listener_as_one(redis_url: str) -> None:
    store = Store.connect(redis_url, Keys("bus2"), patient=True)
    bus = ResultBus(store.client, store.keys, "h2")
    await bus.start()
    try:
        queue = bus.listen("t1")
        message = encode_chunks("t1", 1, 3, ['{"n":3}', '{"n":4}'])
        assert await store.client.publish(bus.channel, message) == 1
        got = await asyncio.wait_for(queue.get(), 10)
        assert got == ResultMessage("t1", 1, 3, "chunks", [{"n": 3}, {"n": 4}])
        assert queue.empty()  # one item: its reader and relay take it in one step
    finally:
        await bus.stop()
        await store.close()
