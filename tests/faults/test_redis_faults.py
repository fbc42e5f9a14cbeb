"""Redis killed under load and started again from its append-only file."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from sllm.client.launcher import Child, free_port, start_redis
from tests.e2e.conftest import HEAD_ENV, WORKER_ENV, Cluster, wait_until
from tests.e2e.test_observability import sample
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


@pytest.mark.timeout(180)
def test_a_redis_that_lost_its_data_leaves_no_orphan_and_serves_after_a_redeploy(
    cluster: Cluster,
) -> None:
    head = cluster.start_head()
    worker = cluster.start_worker()
    scaling = {"min_instances": 1, "max_instances": 1, "keep_alive": 60}
    cluster.deploy("m", auto_scaling_config=scaling)
    cluster.wait_ready("m")
    (backend,) = state.children(worker.popen.pid)
    r = state.connect(cluster.redis_url)
    r.flushall()
    flushed = time.monotonic()
    # The worker re-registers with its next heartbeat, which tells it to stop the
    # instance Redis no longer knows: its backend process ends.
    wait_until(lambda: state.dead(backend), 15, "the orphaned backend to stop")
    print(f"orphaned backend stopped {time.monotonic() - flushed:.2f} s after FLUSHALL")
    assert cluster.worker_known(worker.url)
    assert "runs instances the cluster does not know" in head.log_tail(400)
    # The operator redeploys what Redis lost; it serves again.
    cluster.deploy("m", auto_scaling_config=scaling)
    reply = cluster.client().completions.create(model="m", prompt="back", max_tokens=3)
    assert reply.choices[0].text


@pytest.mark.timeout(180)
def test_a_redis_that_refuses_writes_prunes_no_worker_and_says_so(cluster: Cluster) -> None:
    head = cluster.start_head()  # heartbeat timeout: HEARTBEAT_TIMEOUT (6 s)
    worker = cluster.start_worker()
    cluster.deploy(
        "m", auto_scaling_config={"min_instances": 1, "max_instances": 1, "keep_alive": 60}
    )
    (instance,) = cluster.wait_ready("m")
    r = state.connect(cluster.redis_url)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")  # every write that needs memory is refused
    try:
        refused = cluster.client().completions.create
        with pytest.raises(openai.InternalServerError) as failed:
            refused(model="m", prompt="full", max_tokens=3)
        assert failed.value.status_code == 503
        # Past twice the heartbeat timeout, the worker is still there, and so is its
        # instance; /status, the log and a metric say why nothing works.
        time.sleep(2 * HEARTBEAT_TIMEOUT + 2)
        status = cluster.status()
        assert [w["url"] for w in status["workers"]] == [worker.url]
        assert status.get("redis", {}).get("writable") is False, status.get("redis")
        assert "OutOfMemoryError" in status["redis"]["refusal"], status["redis"]
        assert [i["state"] for i in status["models"][0]["instances"]] == ["ready"]
        metrics = httpx.get(f"{head.url}/metrics", timeout=5).text
        assert sample(metrics, "sllm_redis_writable") == 0
        assert "Redis refuses writes" in head.log_tail(2000)
    finally:
        r.config_set("maxmemory", "0")
    wait_until(lambda: cluster.status()["redis"]["writable"], 10, "Redis to be writable")
    reply = cluster.client().completions.create(model="m", prompt="again", max_tokens=3)
    assert reply.choices[0].text
    # Writes are back, the heartbeats they refused are stale: still no worker is pruned
    # (silence counts from the last refused write), and the instance is the same one.
    time.sleep(2)
    status = cluster.status()
    assert [w["url"] for w in status["workers"]] == [worker.url]
    assert [i["instance_id"] for i in status["models"][0]["instances"]] == [instance["instance_id"]]
    assert ": pruned" not in head.log_tail(5000)
