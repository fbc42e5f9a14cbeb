"""The head's result subscription against a real redis-server whose connections are cut."""

from __future__ import annotations

import asyncio

import redis as redis_sync

from sllm.edge.messages import ResultMessage
from sllm.kv.bus import RESYNC, ResultBus
from sllm.kv.keys import Keys
from sllm.kv.store import Store


async def test_a_cut_subscription_resyncs_its_listeners_and_goes_on(redis_url: str) -> None:
    """Messages published while the subscription is down are lost without a word, so every
    listener must hear RESYNC after the reconnect, however redis-py reconnects."""
    store = Store.connect(redis_url, Keys("bus"), patient=True)
    bus = ResultBus(store.client, store.keys, "h1")
    await bus.start()
    killer = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        queue = bus.listen("t1")
        # (>= 1: the session's server may hold another test's subscription)
        assert killer.client_kill_filter(_type="pubsub") >= 1
        assert await asyncio.wait_for(queue.get(), 10) == RESYNC

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
