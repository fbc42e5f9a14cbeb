"""A cluster of separate hosts: Redis, two heads and three workers, each in a network
namespace of its own, started with the README's "Several machines" commands; this
process is the client's host. head2 and worker3 reach Redis through a TCP proxy on a
host of its own, which fault tests slow down or make drop connections."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sllm.client.launcher import Child, find_redis_server, spawn, wait_healthy, wait_redis
from tests.e2e.conftest import HEAD_ENV, WORKER_ENV, Cluster
from tests.netns import Host, Network, skip_unless_possible

HEADS = ("head1", "head2")
WORKERS = ("worker1", "worker2", "worker3")
# Who reaches Redis through the proxy.
PROXIED = ("head2", "worker3")
PROXY = Path(__file__).with_name("proxy.py")


@dataclass
class Hosts:
    network: Network
    cluster: Cluster  # its management helpers, on head1
    heads: dict[str, Child] = field(default_factory=dict)
    workers: dict[str, Child] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        return self.network.hosts[name]

    def proxy(self, command: str) -> str:
        """Tell the Redis proxy: ``latency SECONDS``, ``drop SECONDS`` or ``clear``."""
        address = (self.host("proxy").address, 6381)
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(f"{command}\n".encode())
            return s.makefile().readline().strip()

    @property
    def head_urls(self) -> list[str]:
        return [c.url for c in self.heads.values()]


def start_redis_host(host: Host, data: Path) -> Child:
    # The README's command, with a data directory of its own.
    argv = [find_redis_server(), "--appendonly", "yes", "--bind", "0.0.0.0",
            "--protected-mode", "no", "--port", "6379", "--dir", str(data)]  # fmt: skip
    data.mkdir(parents=True)
    child = spawn("redis", host.run(argv), data / "redis.log", f"redis://{host.address}:6379/0")
    wait_redis(child, 6379, host=host.address)
    return child


def start_proxy_host(host: Host, redis: Host, log: Path) -> Child:
    argv = [sys.executable, str(PROXY), "0.0.0.0:6380", f"{redis.address}:6379", "6381"]
    child = spawn("proxy", host.run(argv), log, f"redis://{host.address}:6380/0")
    wait_redis(child, 6380, host=host.address)
    return child


def start_head_host(host: Host, redis_url: str, direct_url: str, log: Path) -> Child:
    argv = [sys.executable, "-m", "sllm", "head", "--host", "0.0.0.0", "--port", "8343",
            "--redis-url", redis_url, "--worker-redis-url", direct_url]  # fmt: skip
    child = spawn(host.name, host.run(argv), log, f"http://{host.address}:8343", HEAD_ENV)
    wait_healthy(child, 60)
    return child


def start_worker_host(
    host: Host, heads: list[Host], workdir: Path, redis_url: str | None = None
) -> Child:
    argv = [sys.executable, "-m", "sllm", "worker", "--host", "0.0.0.0", "--port", "8001",
            "--head-url", ",".join(f"http://{h.address}:8343" for h in heads),
            "--advertise-url", f"http://{host.address}:8001",
            "--log-dir", str(workdir / host.name),
            "--storage-path", str(workdir / host.name / "models")]  # fmt: skip
    if redis_url:
        argv += ["--redis-url", redis_url]
    child = spawn(
        host.name, host.run(argv), workdir / f"{host.name}.log", f"http://{host.address}:8001",
        WORKER_ENV,
    )  # fmt: skip
    wait_healthy(child, 60)
    return child


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    skip_unless_possible()
    network = Network()
    cluster: Cluster | None = None
    try:
        network.add("client", here=True)
        redis = network.add("redis")
        for name in ("proxy", *HEADS, *WORKERS):
            network.add(name)
        redis_child = start_redis_host(redis, tmp_path / "redis")
        cluster = Cluster(redis_child.url, tmp_path)
        cluster.procs.append(redis_child)
        proxy = start_proxy_host(network.hosts["proxy"], redis, tmp_path / "proxy.log")
        cluster.procs.append(proxy)
        found = Hosts(network, cluster)
        for name in HEADS:
            url = proxy.url if name in PROXIED else redis_child.url
            head = start_head_host(
                network.hosts[name], url, redis_child.url, tmp_path / f"{name}.log"
            )
            found.heads[name] = head
            cluster.procs.append(head)
        cluster.head = found.heads["head1"]
        heads = [network.hosts[h] for h in HEADS]
        for name in WORKERS:
            url = proxy.url if name in PROXIED else None
            found.workers[name] = start_worker_host(network.hosts[name], heads, tmp_path, url)
            cluster.procs.append(found.workers[name])
        yield found
    finally:
        if cluster is not None:
            cluster.close()
        network.close()
