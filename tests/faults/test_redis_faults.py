"""Redis killed under load and started again from its append-only file."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sllm.client.launcher import Child, free_port, start_redis
from tests.e2e.conftest import HEAD_ENV, WORKER_ENV, Cluster, wait_until
from tests.faults import state
from tests.faults.recorder import Load, Recorder
from tests.faults.state import K

HEARTBEAT = float(WORKER_ENV["SLLM_HEARTBEAT_INTERVAL"])
HEARTBEAT_TIMEOUT = float(HEAD_ENV["SLLM_HEARTBEAT_TIMEOUT"])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A port and data directory for a redis-server this test may kill and restart."""
    yield free_port(), tmp_path / "redis"


@pytest.mark.timeout(180)
def test_redis_killed_under_load_then_restarted(
    own_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, data = own_redis
    servers: list[Child] = [start_redis(port, data)]
    cluster = Cluster(servers[0].url, tmp_path)
    try:
        _run(cluster, servers, port, data)
    finally:
        cluster.close()
        for server in servers:
            server.stop()


def _run(cluster: Cluster, servers: list[Child], port: int, data: Path) -> None:
    head = cluster.start_head()
    worker = cluster.start_worker()
    cluster.deploy(
        "m",
        # Two at a time on one instance, so the rest of the load waits in the queue.
        auto_scaling_config={
            "min_instances": 1, "max_instances": 1, "keep_alive": 60, "max_concurrency": 2,
        },
        backend_config={"tokens_per_second": 5},
    )  # fmt: skip
    cluster.wait_ready("m")
    (backend,) = state.children(worker.popen.pid)
    instance = cluster.model_status("m")["instances"][0]["instance_id"]  # type: ignore[index]
    r = state.connect(cluster.redis_url)
    recorder = Recorder()
    loads = [
        Load(recorder, head.url, label="plain", concurrency=4, max_tokens=10, timeout=60),
        Load(recorder, head.url, label="stream", concurrency=2, max_tokens=10, timeout=60,
             stream=True),
    ]  # fmt: skip
    wait_until(
        lambda: (
            len(recorder.outcomes) >= 4 and len(state.running(r)) == 2 and r.llen(K.queue("m")) >= 3
        ),
        60,
        "requests running and queued",
    )
    queued = r.lrange(K.queue("m"), 0, -1)
    for load in loads:
        load.stop_sending()
    servers[0].popen.send_signal(signal.SIGKILL)
    servers[0].popen.wait(5)
    killed = time.monotonic()

    # New requests are refused at once.
    refused = [recorder.complete(head.url, f"new {i}", label="refused") for i in range(3)]
    for o in refused:
        assert o.status == 503 and o.code == "service_unavailable", o
        assert o.seconds < 1.0, o
    # Those in flight end with an error within a few seconds.
    for load in loads:
        load.stop(timeout=30)
    cut = [o for o in recorder.outcomes if o.started < killed < o.ended]
    assert cut, "some requests should have been in flight"
    for o in cut:
        assert not o.ok and o.status in (200, 503) and o.code, o
        assert o.ended - killed < 5.0, o
    # Nothing crashed.
    assert head.alive() and worker.alive() and not state.dead(backend), cluster.logs()
    # Keep Redis away longer than the head's heartbeat timeout: no heartbeat could be
    # stored meanwhile, which must not read as every worker having died.
    time.sleep(max(0.0, HEARTBEAT_TIMEOUT + 1.0 - (time.monotonic() - killed)))
    outage = time.monotonic() - killed

    servers.append(start_redis(port, data))
    restarted = time.time()
    back = time.monotonic()
    node = cluster.status()["workers"][0]["node_id"]
    wait_until(
        lambda: float(r.hget(K.worker(node), "last_heartbeat") or 0) > restarted,
        10,
        "the worker's heartbeat",
    )
    heard = time.monotonic() - back
    # The next beat after the restart lands: one interval, and slack for a busy machine.
    assert heard < HEARTBEAT + 1.0, f"first heartbeat {heard:.2f}s after the restart"
    assert r.sismember(K.models, "m") and cluster.model_status("m") is not None
    survived = [t for t in queued if r.exists(K.task(t))]
    assert survived == queued, "the queued tasks should survive the restart"
    first = wait_until(
        lambda: (o := recorder.complete(head.url, "hello again", label="again")).ok and o,
        60,
        "a request to succeed again",
    )
    recovered = time.monotonic() - back
    again = [recorder.complete(head.url, f"again {i}", label="again") for i in range(4)]
    assert all(o.ok for o in again), ([o for o in again if not o.ok], cluster.logs())
    assert first.ok and worker.alive() and not state.dead(backend)
    # The same instance serves: it was neither retired nor restarted.
    assert first.instance == instance and all(o.instance == instance for o in again)
    wait_until(lambda: not state.leftover_claims(r, "m"), 30, "claims to be released")
    print(
        f"refused in {max(o.seconds for o in refused):.3f}s; {len(cut)} in flight ended "
        f"{max(o.ended - killed for o in cut):.2f}s after the kill; outage {outage:.1f}s; "
        f"heartbeat {heard:.2f}s and first success {recovered:.2f}s after the restart"
    )
