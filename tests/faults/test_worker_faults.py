"""Workers that die, freeze or are told to stop while they serve requests."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from sllm.client.launcher import Child
from tests.e2e.conftest import HEAD_ENV, Cluster, wait_until
from tests.faults import state
from tests.faults.recorder import Load, Outcome, Recorder

LEASE = float(HEAD_ENV["SLLM_LEASE_SECONDS"])


@dataclass
class Pair:
    """Two workers with one ready instance each."""

    cluster: Cluster
    workers: dict[str, Child]  # instance id -> the worker running it

    def other(self, instance_id: str) -> str:
        return next(i for i in self.workers if i != instance_id)


def two_instances(cluster: Cluster, max_concurrency: int = 32, **backend_config: object) -> Pair:
    cluster.start_head()
    by_url = {w.url: w for w in (cluster.start_worker(), cluster.start_worker())}
    scaling = {"min_instances": 2, "max_instances": 2, "keep_alive": 60}
    cluster.deploy(
        "m",
        auto_scaling_config={**scaling, "max_concurrency": max_concurrency},
        backend_config=backend_config,
    )
    instances = cluster.wait_ready("m", 2)
    urls = {w["node_id"]: w["url"] for w in cluster.status()["workers"]}
    workers = {i["instance_id"]: by_url[urls[i["node_id"]]] for i in instances}
    assert len({w.url for w in workers.values()}) == 2, "one instance per worker"
    return Pair(cluster, workers)


def backend_of(worker: Child, instance_id: str) -> tuple[int, int]:
    """(pid, port) of the backend process serving ``instance_id`` under ``worker``."""
    for proc in psutil.Process(worker.popen.pid).children(recursive=True):
        argv = proc.cmdline()
        if instance_id in argv:
            return proc.pid, int(argv[argv.index("--port") + 1])
    raise AssertionError(f"no backend process for {instance_id}")


def bytes_read(pid: int) -> int:
    """What a process has read so far (files and sockets): an idle backend reads nothing,
    so growth means a request reached it."""
    return int(psutil.Process(pid).io_counters().read_chars)


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        yield executor


def stale_dropped(head: Child) -> int:
    """The head's count of dropped stale result messages, from its /metrics."""
    text = httpx.get(f"{head.url}/metrics", timeout=5).text
    found = re.search(r"^sllm_stale_messages_dropped_total (\S+)$", text, re.MULTILINE)
    assert found, "the head should export sllm_stale_messages_dropped_total"
    return int(float(found.group(1)))


def claimed(r: state.redis.Redis, request_id: str) -> state.Task | None:
    task = state.task_by_request(r, request_id)
    return task if task is not None and task.state == "running" else None


@pytest.mark.timeout(120)
def test_worker_killed_before_first_token_retries_elsewhere_within_a_lease(
    cluster: Cluster, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    pair = two_instances(cluster, ttft=1.5)
    head = cluster.head
    assert head is not None
    r = state.connect(cluster.redis_url)
    recorder = Recorder()

    # Neighbours in flight on both workers: their retries compete with the victim's.
    load = Load(recorder, head.url, label="load", concurrency=4, max_tokens=4, timeout=60)
    try:
        wait_until(lambda: len(recorder.by_label("load")) >= 4, 30, "background traffic")
        rid = uuid.uuid4().hex
        request = pool.submit(
            recorder.complete, head.url, "kill me softly", label="victim", request_id=rid
        )
        task = wait_until(lambda: claimed(r, rid), 15, "the task to be claimed")
        victim = pair.workers[task.instance]
        victim.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        outcome: Outcome = request.result(timeout=30)
        # Let the neighbours run on the survivor a while.
        wait_until(
            lambda: len([o for o in recorder.by_label("load") if o.started > killed]) >= 4,
            30,
            "traffic after the kill",
        )
    finally:
        load.stop()
    after_kill = outcome.ended - killed
    assert outcome.ok, f"{outcome}\n{cluster.logs()}"
    assert outcome.instance == pair.other(task.instance), outcome
    # The first token comes 1.5 s into the new attempt: the retry began at once.
    assert after_kill < LEASE + 1, f"answered {after_kill:.2f}s after the kill"
    final = state.task_by_request(r, rid)
    assert final is not None and final.attempt == 2 and final.state == "done", final

    # The cluster goes on serving on the survivor; nothing stays claimed.
    for i in range(3):
        recorder.complete(head.url, f"after {i}", label="after")
    assert not recorder.failures(), recorder.report()
    wait_until(lambda: not state.leftover_claims(r, "m"), 15, "claims to be released")
    print(f"answered {after_kill:.2f}s after the kill, {outcome.seconds:.2f}s in all")


@pytest.mark.timeout(120)
def test_worker_paused_past_its_lease_loses_the_task_and_its_late_output_is_dropped(
    cluster: Cluster, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    pair = two_instances(cluster, ttft=2.0)
    head = cluster.head
    assert head is not None
    r = state.connect(cluster.redis_url)
    recorder = Recorder()
    prompt = "frozen in time"
    backends = {i: backend_of(w, i)[0] for i, w in pair.workers.items()}
    idle = {i: bytes_read(pid) for i, pid in backends.items()}

    rid = uuid.uuid4().hex
    request = pool.submit(
        recorder.complete, head.url, prompt, label="victim", stream=True, max_tokens=12,
        request_id=rid,
    )  # fmt: skip
    task = wait_until(lambda: claimed(r, rid), 15, "the task to be claimed")
    frozen = pair.workers[task.instance]
    # Paused once the backend has read the request and before its first token (ttft
    # 2 s): the backend goes on generating into the frozen worker's socket.
    backend = backends[task.instance]
    wait_until(
        lambda: bytes_read(backend) > idle[task.instance], 10, "the backend to get the request"
    )
    frozen.popen.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        # The head stops hearing from the frozen worker and gives the task to the other
        # instance; the frozen worker wakes before that one's first token.
        wait_until(
            lambda: (t := state.task_by_request(r, rid)) is not None and t.attempt == 2,
            30,
            "a second attempt",
        )
        assert time.monotonic() - paused > LEASE, "the pause should outlast the lease"
    finally:
        frozen.popen.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    outcome: Outcome = request.result(timeout=30)
    assert outcome.ok, f"{outcome}\n{cluster.logs()}"
    # Only the new attempt's output: every chunk names one instance, not the frozen one
    # (the other, or one that replaced the frozen worker's once the head suspected it).
    assert len(outcome.instances) == 1 and task.instance not in outcome.instances, outcome
    again = recorder.complete(head.url, prompt, label="again", stream=True, max_tokens=12)
    assert again.ok and outcome.text == again.text, (outcome, again)

    # What the woken worker still sent never reached the client (above): it went into the
    # /invoke answer its dispatcher had closed, or it was published and the head dropped
    # it as stale, each message logged and counted (the request adds to the counter when
    # it ends).
    time.sleep(1.0)
    stale = re.findall(rf"task {task.id}: dropped a stale message of attempt 1", head.log_tail(400))
    assert stale_dropped(head) == len(stale), head.log_tail(400)
    final = state.task_by_request(r, rid)
    assert final is not None and final.attempt == 2 and final.state == "done", final
    assert not recorder.failures(), recorder.report()
    wait_until(lambda: not state.leftover_claims(r, "m"), 15, "claims to be released")
    print(
        f"paused {resumed - paused:.2f}s; request took {outcome.seconds:.2f}s; "
        f"{len(stale)} stale message(s) dropped"
    )


@pytest.mark.timeout(90)
def test_a_killed_worker_takes_its_backends_with_it(cluster: Cluster) -> None:
    pair = two_instances(cluster)
    instance, worker = next(iter(pair.workers.items()))
    backend, _ = backend_of(worker, instance)
    everything = state.children(worker.popen.pid)
    assert backend in everything
    worker.popen.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    worker.popen.wait(5)
    wait_until(lambda: all(state.dead(p) for p in everything), 5, "the backends to die")
    print(f"backends gone {time.monotonic() - killed:.2f}s after the kill")


@pytest.mark.timeout(150)
def test_a_terminated_worker_drains_in_flight_requests_and_hands_back_the_rest(
    cluster: Cluster,
) -> None:
    # Streams of about 2 s, so some are mid-generation on each worker at the signal and
    # more wait in the queue (two at a time per instance).
    pair = two_instances(cluster, max_concurrency=2, tokens_per_second=5)
    head = cluster.head
    assert head is not None
    r = state.connect(cluster.redis_url)
    instance, leaving = next(iter(pair.workers.items()))
    everything = state.children(leaving.popen.pid)
    recorder = Recorder()
    load = Load(
        recorder, head.url, label="load", concurrency=8, stream=True, max_tokens=10, timeout=60
    )
    try:
        busy = wait_until(
            lambda: (
                {t.id for t in state.running(r) if t.instance == instance}
                if len([t for t in state.running(r) if t.instance == instance]) == 2
                and r.llen(state.K.queue("m")) >= 2
                else None
            ),
            30,
            "two requests in flight on the leaving worker and more queued",
        )
        leaving.popen.send_signal(signal.SIGTERM)
        queued = set(r.lrange(state.K.queue("m"), 0, -1))
        signalled = time.monotonic()
        leaving.popen.wait(30)
        exited = time.monotonic()
        wait_until(
            lambda: len([o for o in recorder.by_label("load") if o.started > exited]) >= 6,
            30,
            "traffic after the worker left",
        )
    finally:
        load.stop()

    assert not recorder.failures(), recorder.report() + cluster.logs()
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert leaving.popen.returncode in (0, -signal.SIGTERM), leaving.log_tail()
    assert "Application shutdown complete" in leaving.log_tail(400)
    wait_until(lambda: all(state.dead(p) for p in everything), 5, "its backends to stop")
    # In flight at the signal: finished where they were, on their first attempt.
    drained = state.tasks(r)
    for task_id in busy:
        assert drained[task_id].state == "done" and drained[task_id].attempt == 1, drained[task_id]
        assert drained[task_id].instance in ("", instance)
    served = {o.request_id: o for o in recorder.by_label("load")}
    for task_id in busy:
        assert served[drained[task_id].request_id].instances == (instance,)
    # Queued at the signal: never started there, served elsewhere (on a second attempt
    # only when one was sent there before the head heard, refused, and handed back).
    for task_id in queued:
        assert drained[task_id].state == "done" and drained[task_id].attempt <= 2
        assert instance not in served[drained[task_id].request_id].instances
    # Later requests went to the instance that stayed (or its replacement), and nothing
    # is left claimed or queued.
    late = [o for o in recorder.by_label("load") if o.started > exited]
    assert all(o.instance != instance for o in late), late
    assert all(t.state == "done" for t in drained.values()), drained
    wait_until(lambda: not state.leftover_claims(r, "m"), 15, "claims to be released")
    print(
        f"worker exited {exited - signalled:.2f}s after SIGTERM, {len(busy)} requests drained, "
        f"{len(queued)} queued ones served elsewhere, {len(recorder.outcomes)} requests in all"
    )


@pytest.mark.timeout(180)
def test_killing_half_the_workers_under_load_replaces_their_instances_within_5_s(
    cluster: Cluster,
) -> None:
    # The heartbeat timeout as shipped (60 s): detection must not wait for it.
    head = cluster.start_head(SLLM_HEARTBEAT_TIMEOUT="60", SLLM_AUTOSCALE_INTERVAL="1")
    workers = [cluster.start_worker() for _ in range(6)]
    scaling = {"min_instances": 6, "max_instances": 6, "keep_alive": 60}
    cluster.deploy("m", auto_scaling_config=scaling, backend_config={"tokens_per_second": 40})
    cluster.wait_ready("m", 6, timeout=60)
    urls = {w["url"]: w["node_id"] for w in cluster.status()["workers"]}
    recorder = Recorder()
    load = Load(recorder, head.url, label="load", concurrency=6, max_tokens=8)
    try:
        time.sleep(1.5)
        dead = workers[:3]
        dead_nodes = {urls[w.url] for w in dead}
        for worker in dead:
            worker.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()

        def replaced() -> bool:
            found = cluster.model_status("m") or {"instances": []}
            alive = [
                i
                for i in found["instances"]
                if i["state"] == "ready" and i["node_id"] not in dead_nodes
            ]
            return len(alive) == 6

        wait_until(replaced, 30, "6 ready instances on live workers")
        recovered = time.monotonic() - killed
        time.sleep(1.0)
    finally:
        load.stop(60)
    print(f"6 instances ready again {recovered:.2f} s after killing 3 of 6 workers")
    assert recovered < 5.0, cluster.logs()
    assert not recorder.failures("load"), recorder.report("load")
    # No storm of starts on the dead workers: their first instance, then at most one
    # refused start each.
    starts = re.findall(r"starting instance \S+ of m on (\S+)", head.log_tail(100_000))
    on_dead = [n for n in starts if n in dead_nodes]
    assert len(on_dead) <= 3 * 2, on_dead
    suspected = [w for w in cluster.status()["workers"] if w["suspect"]]
    assert {w["node_id"] for w in suspected} == dead_nodes


@pytest.mark.timeout(120)
def test_a_call_cut_by_its_workers_death_spends_no_attempt(cluster: Cluster) -> None:
    # One attempt per request: calls in flight on a worker that dies must not use it up.
    head = cluster.start_head(SLLM_MAX_ATTEMPTS="1")
    workers = [cluster.start_worker(), cluster.start_worker()]
    cluster.deploy(
        "m",
        auto_scaling_config={"min_instances": 2, "max_instances": 2, "keep_alive": 60},
        backend_config={"tokens_per_second": 40},
    )
    cluster.wait_ready("m", 2)
    recorder = Recorder()
    load = Load(recorder, head.url, label="load", concurrency=6, max_tokens=16)
    try:
        wait_until(lambda: len(recorder.by_label("load")) >= 12, 30, "traffic on both")
        r = state.connect(cluster.redis_url)
        # Killed with a call in flight: one killed between two calls cut none (a flake).
        wait_until(lambda: in_flight(r, "m", workers[0].url), 10, "a call on the worker")
        workers[0].popen.send_signal(signal.SIGKILL)  # mid-call for some requests
        workers[0].popen.wait(5)
        time.sleep(3)
    finally:
        load.stop(60)
    assert not recorder.failures("load"), recorder.report("load") + cluster.logs()
    assert "died under the call" in head.log_tail(5000), head.log_tail(200)


def in_flight(r: Any, model: str, worker_url: str) -> bool:
    """Whether an instance of ``model`` on the worker at ``worker_url`` runs a call."""
    return any(
        i.get("url") == worker_url and int(i.get("outstanding") or 0) > 0
        for i in state.instances(r, model).values()
    )
