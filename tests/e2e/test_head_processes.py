"""`sllm head --processes N`: several head processes on one port, a dead one replaced,
all of them stopped with the head."""

from __future__ import annotations

import concurrent.futures
import os
import signal

import httpx
import psutil
import pytest

from tests.e2e.conftest import Cluster, wait_until

pytestmark = pytest.mark.e2e


def head_ids(url: str, connections: int) -> set[str]:
    """The head ids that answer ``connections`` new connections."""
    ids = set()
    for _ in range(connections):
        with httpx.Client(timeout=5) as fresh:  # a new connection each time
            ids.add(fresh.get(f"{url}/health").json()["head_id"])
    return ids


def heads(pid: int) -> list[psutil.Process]:
    """The head processes the supervisor ``pid`` runs (not multiprocessing's helpers)."""
    return [
        child
        for child in psutil.Process(pid).children()
        if any("spawn_main" in part for part in child.cmdline())
    ]


def test_head_processes_share_the_port_and_the_cluster(cluster: Cluster) -> None:
    head = cluster.start_head(SLLM_PROCESSES="2")
    cluster.start_worker()
    cluster.deploy("m", auto_scaling_config={"min_instances": 1, "max_instances": 1})
    cluster.wait_ready("m", 1)
    serving = heads(head.popen.pid)
    assert len(serving) == 2
    # The kernel spreads connections over both heads.
    assert len(head_ids(head.url, 40)) == 2
    client = cluster.client()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda i: client.completions.create(model="m", prompt=f"p{i}", max_tokens=4),
                range(40),
            )
        )
    assert all(r.usage is not None and r.usage.completion_tokens > 0 for r in replies)
    # A head process that dies is replaced; the port keeps answering meanwhile.
    before = head_ids(head.url, 40)
    os.kill(serving[0].pid, signal.SIGKILL)
    wait_until(lambda: len(heads(head.popen.pid)) == 2, 30, "a new head")
    wait_until(lambda: len(head_ids(head.url, 20) - before) == 1, 30, "the new head serving")
    assert client.completions.create(model="m", prompt="again", max_tokens=2).usage is not None
    # SIGTERM stops them all.
    serving = heads(head.popen.pid)
    helpers = [c for c in psutil.Process(head.popen.pid).children() if c not in serving]
    head.popen.send_signal(signal.SIGTERM)
    assert head.popen.wait(60) == 0
    # The supervisor joined its heads before it exited.
    assert not [c for c in serving if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    # multiprocessing's resource tracker ends on its own once the supervisor's end of its
    # pipe closes, a moment after the supervisor.
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive
