"""The end-to-end suite's core cases on separate hosts: chat, streaming, scale from
zero, and two workers sharing load, through both heads; a model one host stored
fetched by another."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.hosts.conftest import WORKERS, Hosts
from tests.tiny_models import build_tiny_causal_lm

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


def test_a_worker_fetches_a_model_another_host_stored(hosts: Hosts, tmp_path: Path) -> None:
    """A model stored on deploy by one host; two instances, on two hosts: a host that
    does not hold the copy fetches it from the holder over the network instead of
    converting the model from its source, and reports how fast that went."""
    cluster = hosts.cluster
    source = str(build_tiny_causal_lm(tmp_path / "lm"))
    config = cluster.deploy(
        "lm",
        backend="transformers",
        backend_config={"pretrained_model_name_or_path": source},
        auto_scaling_config={"min_instances": 0, "max_instances": 2, "keep_alive": 60},
    )
    holder = wait_until(lambda: holding(cluster, source), 120, "the model stored on deploy")
    config["auto_scaling_config"]["min_instances"] = 2
    resp = httpx.post(f"{hosts.head_urls[0]}/update", json=config, timeout=10)
    assert resp.status_code == 200, resp.text
    instances = cluster.wait_ready("lm", 2, timeout=120)
    workers = {w["node_id"]: w for w in cluster.status()["workers"]}
    # Two hosts; whichever does not hold the copy (both, when the holder was the busier
    # one: a tiny model loads as fast either way) fetched it from the holder.
    placed = [workers[i["node_id"]] | i for i in instances]
    fetchers = [f for f in placed if f["url"] != holder]
    assert len({i["node_id"] for i in instances}) == 2 and fetchers
    for fetcher in fetchers:
        host = next(
            name for name in WORKERS if fetcher["url"] == f"http://{hosts.host(name).address}:8001"
        )
        log = (tmp_path / host / f"{fetcher['instance_id']}.log").read_text()
        assert f"fetched {source} from {holder}" in log, log[-3000:]
        assert "storing" not in log  # not converted from its source
        # Its heartbeat reports how fast that went: placement's next estimate for it.
        url = fetcher["url"]
        wait_until(
            lambda: resources(cluster, url).get("peer_fetch_bytes_per_s", 0) > 0,  # noqa: B023
            10,
            "the fetch's speed in the fetcher's heartbeat",
        )
    for url in hosts.head_urls:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.completions.create(model="lm", prompt="hello", max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        client.close()


def holding(cluster: Cluster, source: str) -> str | None:
    """The URL of a worker whose heartbeat says it has ``source`` stored."""
    for worker in cluster.status()["workers"]:
        if any(c["source"] == source for c in worker.get("cache") or []):
            return str(worker["url"])
    return None


def resources(cluster: Cluster, url: str) -> dict[str, Any]:
    worker = next(w for w in cluster.status()["workers"] if w["url"] == url)
    found: dict[str, Any] = worker["resources"]
    return found
