"""Two heads on one Redis, one of them killed while both serve; a worker that knows both."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.faults import state
from tests.faults.recorder import Load, Recorder
from tests.faults.state import K


def head_id(url: str) -> str:
    return str(httpx.get(f"{url}/health", timeout=5).json()["head_id"])


@pytest.mark.timeout(180)
def test_killing_one_of_two_heads_loses_no_request_of_the_other(cluster: Cluster) -> None:
    doomed = cluster.start_head()
    survivor = cluster.start_head()  # the cluster fixture now talks to this one
    doomed_id, survivor_id = head_id(doomed.url), head_id(survivor.url)
    r = state.connect(cluster.redis_url)
    # The doomed head leads the autoscaler (and so the reaper): its death moves that too.
    wait_until(lambda: r.get(K.lock("autoscaler")) == doomed_id, 10, "the first head to lead")
    cluster.start_worker(survivor)
    cluster.start_worker(survivor)
    # Six slots for eight clients: requests wait in the queue, where either head's
    # dispatcher claims them (one that finds the queue empty goes to its own head's).
    scaling = {"min_instances": 2, "max_instances": 2, "keep_alive": 60, "max_concurrency": 3}
    cluster.deploy("m", auto_scaling_config=scaling, backend_config={"tokens_per_second": 10})
    cluster.wait_ready("m", 2)
    recorder = Recorder()
    common = {"max_tokens": 8, "timeout": 60}
    loads = [Load(recorder, doomed.url, label="doomed", concurrency=3, **common)]
    try:
        # A head keeps the slots it holds (each of its tasks that ends wakes its own claim
        # loop first, while the other head looks once a second), so the doomed head takes
        # its share before the survivor's clients come.
        wait_until(
            lambda: len([t for t in state.running(r) if t.owner == doomed_id]) == 3,
            30,
            "the doomed head to run its own clients' requests",
        )
        loads += [
            Load(recorder, survivor.url, label="plain", concurrency=3, **common),
            Load(recorder, survivor.url, label="stream", concurrency=2, stream=True, **common),
        ]
        # Both heads dispatch from the one queue: wait for the doomed one to be running
        # some of the survivor's requests, one that began so lately (a request takes
        # 0.8 s) that it is still running when the kill lands.
        wait_until(
            lambda: (
                len(recorder.outcomes) >= 10
                and any(
                    t.owner == doomed_id
                    and t.reply_to == K.results(survivor_id)
                    and time.time() - t.claimed < 0.3
                    for t in state.running(r)
                )
            ),
            60,
            "the doomed head to run a request of the survivor's",
        )
        doomed.popen.send_signal(signal.SIGKILL)
        doomed.popen.wait(5)
        killed = time.monotonic()
        # Its claims, as it left them: the only tasks that may run twice.
        faulted = {t.id for t in state.running(r) if t.owner == doomed_id}
        wait_until(lambda: r.get(K.lock("autoscaler")) == survivor_id, 30, "the survivor to lead")
        led = time.monotonic() - killed
        wait_until(
            lambda: len([o for o in recorder.by_label("plain") if o.started > killed + led]) >= 6,
            60,
            "the survivor to serve on after the takeover",
        )
    finally:
        for load in loads:
            load.stop()

    mine = recorder.by_label("plain") + recorder.by_label("stream")
    assert not [o for o in mine if not o.ok], recorder.report("plain") + recorder.report("stream")
    wait_until(lambda: not state.leftover_claims(r, "m"), 20, "claims to be released")
    assert r.llen(K.queue("m")) == 0
    tasks = state.tasks(r)
    tasks_by_request = {t.request_id: t for t in tasks.values()}
    twice = {t.id for t in tasks.values() if t.attempt > 1}
    assert twice <= faulted, f"ran twice without a fault: {twice - faulted}"
    assert all(t.state in ("done", "cancelled") for t in tasks.values()), tasks
    rescued = [o for o in mine if tasks_by_request[o.request_id].id in faulted]
    assert rescued, "some request of the survivor's should have been caught by the kill"
    # Their worker carried the attempts on (holding their leases), so they were neither
    # retried nor kept waiting for the leases to run out.
    carried = [o for o in rescued if tasks_by_request[o.request_id].attempt == 1]
    assert carried, [tasks_by_request[o.request_id] for o in rescued]
    assert all(o.seconds < 3.0 for o in carried), carried
    print(
        f"{len(mine)} requests to the survivor, {len(faulted)} in flight on the killed head, "
        f"{len(rescued)} of them the survivor's, answered in "
        f"{', '.join(f'{o.seconds:.2f}s' for o in rescued)}; survivor led {led:.2f}s after the kill"
    )


@pytest.mark.timeout(120)
def test_a_worker_given_every_heads_url_outlives_the_head_it_beat_to(cluster: Cluster) -> None:
    first = cluster.start_head()
    second = cluster.start_head()  # the cluster fixture now talks to this one
    worker = cluster.start_worker(
        first, head_url=f"{first.url}, {second.url}/", SLLM_HEARTBEAT_INTERVAL="0.5"
    )
    cluster.deploy(
        "m", auto_scaling_config={"min_instances": 1, "max_instances": 1, "keep_alive": 60}
    )
    cluster.wait_ready("m")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    killed = time.monotonic()
    # The worker beats to the survivor within a second or two; silence would last until
    # the survivor prunes it (heartbeat_timeout, 60 s) and its instance with it.
    wait_until(lambda: f"heartbeats go to {second.url}" in worker.log_tail(200), 10, "the move")
    moved = time.monotonic() - killed
    time.sleep(2.0)
    (known,) = cluster.status()["workers"]
    assert known["url"] == worker.url and known["seconds_since_heartbeat"] < 1.5, known
    answer = cluster.client(second).completions.create(model="m", prompt="hi", max_tokens=3)
    assert answer.choices[0].text
    print(f"heartbeats moved {moved:.2f}s after the kill")
