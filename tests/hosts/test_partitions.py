"""Partitions, Jepsen style: a seeded nemesis cuts links between the hosts while clients
send plain and streamed requests through both heads; after each fault, every request
had one answer before its deadline, no stream carried a duplicated or stale chunk, and
the cluster converged (no stuck task, no orphan instance, every worker registered)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import HEAD_ENV, wait_until
from tests.faults import state
from tests.faults.recorder import Load, Recorder
from tests.hosts.conftest import HEADS, PROXIED, WORKERS, Hosts
from tests.hosts.history import check, orphans

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TOKENS = 12
DEADLINE = float(HEAD_ENV["SLLM_REQUEST_TIMEOUT"]) + 5.0
SEED = int(os.environ.get("SLLM_NEMESIS_SEED", "20261206"))


@dataclass
class Fault:
    name: str
    seconds: float  # how long it lasts
    links: Callable[[str], list[tuple[str, str]]] = lambda worker: []  # pairs to cut
    proxy: str = ""  # what the Redis proxy of head2 and worker3 does meanwhile
    # The errors clients may see: none where another worker or a retry can serve.
    allowed: frozenset[str] = frozenset()


def _heads(worker: str) -> list[tuple[str, str]]:
    return [(worker, h) for h in HEADS]


def _redis(worker: str) -> list[tuple[str, str]]:
    """The link between ``worker`` and Redis: through the proxy for those it serves."""
    return [(worker, "proxy" if worker in PROXIED else "redis")]


FAULTS = [
    Fault("worker cut from Redis only", 8.0, _redis),
    Fault("worker cut from the heads only, briefly", 2.0, _heads),
    Fault("worker cut from Redis and the heads", 8.0, lambda w: [*_redis(w), *_heads(w)]),
    # Its clients are refused (503) rather than kept waiting.
    Fault(
        "head1 cut from Redis",
        8.0,
        lambda w: [("head1", "redis")],
        allowed=frozenset({"service_unavailable"}),
    ),
    Fault("worker cut from the heads until its instances run elsewhere", 12.0, _heads),
    Fault("head2's and worker3's Redis link slow (+50 ms each way)", 8.0, proxy="latency 0.05"),
    Fault("head2's and worker3's Redis link dropping connections every 2 s", 8.0, proxy="drop 2"),
]


def test_partitions_leave_every_request_one_answer_and_a_converged_cluster(hosts: Hosts) -> None:
    cluster, network = hosts.cluster, hosts.network
    rng = random.Random(SEED)
    r = state.connect(cluster.redis_url)
    cluster.deploy(
        "m",
        auto_scaling_config={
            "min_instances": 2, "max_instances": 3, "keep_alive": 60,
            "queue_per_instance_threshold": 2,
        },
        backend_config={"tokens_per_second": 40},
    )  # fmt: skip
    cluster.wait_ready("m", 2, timeout=60)
    rows = []
    for fault in rng.sample(FAULTS, len(FAULTS)):
        busy = [i["node_id"] for i in cluster.model_status("m")["instances"]]  # type: ignore[index]
        node_of = {w["url"]: w["node_id"] for w in cluster.status()["workers"]}
        serving = [
            w for w in WORKERS if node_of.get(f"http://{hosts.host(w).address}:8001") in busy
        ]
        worker = rng.choice(serving)
        recorder = Recorder()
        request = {"max_tokens": TOKENS, "timeout": DEADLINE + 30, "extra": {"ignore_eos": True}}
        loads = [
            Load(recorder, url, label=f"{kind}{n}", concurrency=2, stream=kind == "stream",
                 **request)  # type: ignore[arg-type]
            for n, url in enumerate(hosts.head_urls)
            for kind in ("plain", "stream")
        ]  # fmt: skip
        time.sleep(1.5)
        links = fault.links(worker)
        for a, b in links:
            network.cut(a, b)
        if fault.proxy:
            hosts.proxy(fault.proxy)
        time.sleep(fault.seconds)
        for a, b in links:
            network.heal(a, b)
        hosts.proxy("clear")
        healed = time.monotonic()
        time.sleep(2.0)
        for load in loads:
            load.stop(timeout=DEADLINE + 30)
        seen = check(recorder.outcomes, tokens=TOKENS, deadline=DEADLINE)
        assert not seen.violations, (fault.name, seen.violations[:10], cluster.logs())
        assert set(seen.failed) <= fault.allowed, (fault.name, recorder.report(), cluster.logs())

        def converged() -> bool:
            status = cluster.status()
            workers_ok = len(status["workers"]) == len(WORKERS) and all(
                w["healthy"] for w in status["workers"]
            )
            return (
                workers_ok
                and not state.unsettled(r, "m")
                and not orphans(status, state.instances(r, "m"))
            )

        wait_until(converged, 60, f"the cluster to converge after: {fault.name}", interval=0.5)
        recovery = time.monotonic() - healed
        after = recorder.complete(hosts.head_urls[0], "after", max_tokens=2)
        assert after.ok, (fault.name, after)
        where = f" ({worker})" if links else ""
        rows.append(f"| {fault.name}{where} | {seen.summary()} | {recovery:.1f} s |")
    print(f"\nseed {SEED}\n| fault | what clients saw | converged after healing |")
    print("\n".join(rows))
