"""Real ``sllm head`` and ``sllm worker`` processes on free ports, around a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sllm.client.launcher import Child, free_port, start_head, start_worker

# Short timers so the tests see leases, heartbeats and scaling happen in seconds.
HEAD_ENV = {
    "SLLM_LEASE_SECONDS": "3",
    "SLLM_HEARTBEAT_TIMEOUT": "6",
    "SLLM_AUTOSCALE_INTERVAL": "0.2",
    "SLLM_REQUEST_TIMEOUT": "60",
}
# No warm processes unless a test wants them: each would import torch, for nothing
# in tests of the dummy backend, on a 2-core machine running a worker per test.
WORKER_ENV = {"SLLM_HEARTBEAT_INTERVAL": "0.5", "SLLM_WARM_PROCESSES": "0"}


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the process may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last_error!r})")


@dataclass
class Cluster:
    redis_url: str
    workdir: Path
    procs: list[Child] = field(default_factory=list)
    head: Child | None = None
    clients: list[openai.OpenAI] = field(default_factory=list)
    # Sent on management calls (/status, /register) when the head has SLLM_ADMIN_KEY.
    admin_key: str | None = None

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    def start_head(self, **env: str) -> Child:
        port = free_port()
        head = start_head(
            port, self.redis_url, self.workdir / f"head-{port}.log", {**HEAD_ENV, **env}
        )
        self.procs.append(head)
        self.head = head
        return head

    def start_worker(
        self, head: Child | None = None, *, head_url: str | None = None, **env: str
    ) -> Child:
        """A worker beating to ``head`` (default: the latest head), or to ``head_url``."""
        head = head or self.head
        assert head is not None
        worker = start_worker(
            free_port(), head_url or head.url, self.workdir, {**WORKER_ENV, **env}
        )
        self.procs.append(worker)
        wait_until(lambda: self.worker_known(worker.url), 10, "the worker's registration")
        return worker

    def worker_known(self, url: str) -> bool:
        return any(w["url"] == url for w in self.status()["workers"])

    def status(self) -> dict[str, Any]:
        assert self.head is not None
        data: dict[str, Any] = httpx.get(
            f"{self.head.url}/status", headers=self.admin_headers(), timeout=5
        ).json()
        return data

    def model_status(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.status()["models"] if m["model"] == name), None)

    def wait_ready(self, model: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        """``model``'s instances once they are exactly ``count``, all ready."""

        def ready() -> list[dict[str, Any]] | None:
            found = self.model_status(model)
            instances: list[dict[str, Any]] = found["instances"] if found else []
            return instances if [i["state"] for i in instances] == ["ready"] * count else None

        found: list[dict[str, Any]] = wait_until(ready, timeout, f"{count} ready instance(s)")
        return found

    def deploy(self, model: str, **overrides: Any) -> dict[str, Any]:
        assert self.head is not None
        config: dict[str, Any] = {
            "model": model,
            "backend": "dummy",
            "auto_scaling_config": {"min_instances": 0, "max_instances": 1, "keep_alive": 30},
            "backend_config": {},
        }
        config.update(overrides)
        resp = httpx.post(
            f"{self.head.url}/register", json=config, headers=self.admin_headers(), timeout=10
        )
        assert resp.status_code == 200, resp.text
        return config

    def client(
        self, head: Child | None = None, *, api_key: str = "unused", **kwargs: Any
    ) -> openai.OpenAI:
        head = head or self.head
        assert head is not None
        client = openai.OpenAI(base_url=f"{head.url}/v1", api_key=api_key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.procs)


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url, tmp_path)
    try:
        yield c
    finally:
        c.close()
