"""The end-to-end suite's core cases on separate hosts: chat, streaming, scale from
zero, and two workers sharing load, through both heads."""

from __future__ import annotations

import concurrent.futures
import time

import openai
import pytest

from tests.hosts.conftest import WORKERS, Hosts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_a_cluster_of_separate_hosts_serves_through_both_heads(hosts: Hosts) -> None:
    cluster = hosts.cluster
    workers = cluster.status()["workers"]
    # Each worker registered with the address of its own host.
    assert sorted(w["url"] for w in workers) == sorted(
        f"http://{hosts.host(w).address}:8001" for w in WORKERS
    )
    # Scale from zero: deployed with no instance, started by the first request.
    cluster.deploy(
        "m",
        auto_scaling_config={
            "min_instances": 0, "max_instances": 2, "keep_alive": 60,
            "queue_per_instance_threshold": 1,
        },
        backend_config={"tokens_per_second": 50},
    )  # fmt: skip
    assert cluster.model_status("m")["instances"] == []  # type: ignore[index]
    clients = [
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        for url in hosts.head_urls
    ]
    chat = clients[0].chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert chat.choices[0].message.content
    # Streaming through the other head.
    chunks = list(clients[1].completions.create(model="m", prompt="hi", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    # Load through both heads: a second instance starts, on another host, and both serve
    # (rounds of load until both have answered: the second's start takes a moment).
    served: set[str | None] = set()
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while len(served) < 2 and time.monotonic() < deadline:
            replies = list(
                pool.map(
                    lambda i: clients[i % 2].completions.create(
                        model="m", prompt=f"p{i}", max_tokens=20, extra_body={"ignore_eos": True}
                    ),
                    range(48),
                )
            )
            assert all(r.usage is not None and r.usage.completion_tokens == 20 for r in replies)
            served |= {r.system_fingerprint for r in replies}
    assert len(served) == 2, served
    instances = cluster.wait_ready("m", 2)
    assert len({i["node_id"] for i in instances}) == 2
    for client in clients:
        client.close()
