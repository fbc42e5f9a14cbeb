"""A Redis service that fails over: a primary, a replica and three sentinels, each a real
redis-server process on a free port of this machine."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from sllm.client.launcher import Child, find_redis_server, free_port, spawn, start_redis, wait_redis

SERVICE = "sllm"
# Sentinel calls the primary down after this much silence, then elects and promotes.
DOWN_AFTER_MS = 1000


@dataclass
class SentinelSetup:
    primary: Child
    replica: Child
    sentinels: list[tuple[Child, int]]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for _, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers says."""
        for _, port in self.sentinels:
            try:
                with redis.Redis(port=port, socket_timeout=1) as s:
                    host_port = s.sentinel_get_master_addr_by_name(SERVICE)
                    return int(host_port[1]) if host_port else None
            except redis.RedisError:
                continue
        return None

    def kill_primary(self) -> None:
        self.primary.popen.send_signal(signal.SIGKILL)
        self.primary.popen.wait(5)

    def stop(self) -> None:
        for child in [self.primary, self.replica, *(c for c, _ in self.sentinels)]:
            child.stop()


def start_sentinel_setup(tmp: Path, timeout: float = 30.0) -> SentinelSetup:
    """The service ``SERVICE``: a primary, its replica in sync, and three sentinels
    (quorum two) that know both and one another, so a failover can be elected."""
    primary_port, replica_port = free_port(), free_port()
    primary = start_redis(primary_port, tmp / "primary")
    replica = start_redis(
        replica_port, tmp / "replica", args=["--replicaof", "127.0.0.1", str(primary_port)]
    )
    sentinels = []
    for index in range(3):
        port = free_port()
        folder = tmp / f"sentinel{index}"
        folder.mkdir(parents=True)
        config = folder / "sentinel.conf"  # a sentinel rewrites its file: one each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        child = spawn(
            "sentinel",
            [find_redis_server(), str(config), "--sentinel"],
            folder / "sentinel.log",
            f"redis://127.0.0.1:{port}",
        )
        wait_redis(child, port)
        sentinels.append((child, port))
    setup = SentinelSetup(primary, replica, sentinels)
    try:
        _wait_ready(setup, replica_port, timeout)
    except BaseException:
        setup.stop()
        raise
    return setup


def _wait_ready(setup: SentinelSetup, replica_port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with redis.Redis(port=replica_port, decode_responses=True) as r:
            synced = r.info("replication").get("master_link_status") == "up"
        known = True
        for _, port in setup.sentinels:
            with redis.Redis(port=port, decode_responses=True) as s:
                replicas = s.sentinel_slaves(SERVICE)
                others = s.sentinel_sentinels(SERVICE)
            known &= any(int(r["port"]) == replica_port for r in replicas) and len(others) == 2
        if synced and known:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the sentinels did not learn the replica and one another")
        time.sleep(0.2)
