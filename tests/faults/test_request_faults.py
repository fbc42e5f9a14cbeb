"""Faults one request brings on itself or meets on its way: a poison prompt that crashes
its backend, a killed result subscription, a client that hangs up mid-stream or before
its stream begins."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest
import redis

from sllm.client.launcher import Child
from tests.e2e.conftest import Cluster, wait_until
from tests.faults import state
from tests.faults.recorder import Load, Recorder
from tests.faults.state import K

ONE_INSTANCE = {"min_instances": 1, "max_instances": 1, "keep_alive": 30}


def one_ready_instance(cluster: Cluster, backend_config: dict[str, object]) -> tuple[Child, Child]:
    """A head, a worker and model "m" on one ready dummy instance: (head, worker)."""
    head = cluster.start_head()
    worker = cluster.start_worker()
    cluster.deploy("m", auto_scaling_config=ONE_INSTANCE, backend_config=backend_config)
    cluster.wait_ready("m")
    return head, worker


@pytest.mark.timeout(180)
def test_poison_request_fails_after_max_attempts_and_spares_its_neighbours(
    cluster: Cluster,
) -> None:
    # Normal requests take about a second, so several are mid-generation whenever the
    # poison request takes the backend down.
    head, _ = one_ready_instance(cluster, {"crash_on_prompt": "poison", "tokens_per_second": 8})
    first = cluster.model_status("m")["instances"][0]["instance_id"]  # type: ignore[index]
    r = state.connect(cluster.redis_url)
    recorder = Recorder()
    load = Load(recorder, head.url, label="normal", concurrency=4, max_tokens=8, timeout=90)
    try:
        wait_until(lambda: len(recorder.by_label("normal")) >= 4, 30, "normal traffic")
        poison = recorder.complete(head.url, "a poison pill", label="poison", timeout=90)
        # Keep the neighbours going until the replacement has served some of them.
        wait_until(
            lambda: (
                sum(1 for o in recorder.by_label("normal") if o.ok and o.instance != first) >= 4
            ),
            60,
            "normal requests served by a replacement instance",
        )
    finally:
        load.stop()

    normal = recorder.by_label("normal")
    assert not recorder.failures("normal"), recorder.report("normal") + cluster.logs()
    assert poison.status == 502 and poison.code == "attempts_exhausted", poison
    assert "after 2 attempt(s)" in poison.error, poison
    task = state.task_by_request(r, poison.request_id)
    assert task is not None and task.attempt == 2 and task.state == "failed", task
    # Neighbours caught mid-generation by a crash were retried, never lost.
    assert len(normal) >= 8 and len({o.instance for o in normal}) >= 2
    cluster.wait_ready("m")
    assert cluster.model_status("m")["instances"][0]["instance_id"] != first  # type: ignore[index]
    wait_until(lambda: not state.leftover_claims(r, "m"), 15, "claims to be released")


def cancelled_and_released(r: redis.Redis, request_id: str) -> state.Task:
    """The request's task once it is cancelled and nothing holds it any more."""
    # Claims first: the release and the stored outcome are one Lua step, so a task read
    # after its claims are gone has its outcome (read before, it may still lack it).
    task: state.Task = wait_until(
        lambda: (
            not state.leftover_claims(r, "m")
            and (t := state.task_by_request(r, request_id)) is not None
            and t.state == "cancelled"
            and t
        ),
        10,
        "the task to be cancelled and released",
    )
    return task


def stays(check: Callable[[], bool], seconds: float, interval: float = 0.1) -> bool:
    """Whether ``check`` holds for the whole of ``seconds`` (what a negative takes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(interval)
    return True


@pytest.mark.timeout(150)
def test_killed_result_subscriptions_never_hang_a_request(cluster: Cluster) -> None:
    head = cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m", auto_scaling_config=ONE_INSTANCE, backend_config={"tokens_per_second": 10})
    r = state.connect(cluster.redis_url)
    recorder = Recorder()
    loads = [
        Load(recorder, head.url, label="plain", concurrency=3, max_tokens=10, timeout=60),
        Load(recorder, head.url, label="stream", concurrency=3, max_tokens=10, timeout=60,
             stream=True),
    ]  # fmt: skip
    reconnects: list[float] = []
    try:
        for round_ in range(3):
            wait_until(
                lambda n=round_: len(recorder.outcomes) >= 6 * (n + 1), 60, "traffic to flow"
            )
            wait_until(lambda: len(state.running(r)) >= 2, 30, "requests in flight")
            killed = r.client_kill_filter(_type="pubsub")
            cut = time.monotonic()
            assert killed >= 1, "the head's result subscription should have been cut"
            wait_until(lambda: r.pubsub_numsub(K.control)[0][1] >= 1, 10, "the head to resubscribe")
            reconnects.append(time.monotonic() - cut)
        wait_until(lambda: len(recorder.outcomes) >= 30, 60, "traffic after the cuts")
    finally:
        for load in loads:
            load.stop()
    # Nothing hung: every request ended, well within a poll interval or two of a cut.
    assert all(o.status != 0 for o in recorder.outcomes), recorder.report()
    slowest = max(o.seconds for o in recorder.outcomes)
    assert slowest < 10, recorder.report()
    # A plain request reads its stored outcome: it never notices. A stream that lost a
    # chunk on the cut connection goes on from what it relayed, or starts over when it
    # had relayed nothing: the client never notices either.
    assert not recorder.failures("plain"), recorder.report("plain")
    assert not recorder.failures("stream"), recorder.report("stream")
    after = [recorder.complete(head.url, f"after {i}", label="after") for i in range(3)]
    assert all(o.ok for o in after), after
    wait_until(lambda: not state.leftover_claims(r, "m"), 15, "claims to be released")
    print(
        f"{len(recorder.outcomes)} requests, slowest {slowest:.2f}s, "
        f"resubscribed within {max(reconnects):.2f}s"
    )


@pytest.mark.timeout(120)
def test_a_client_hanging_up_mid_stream_cancels_its_task(cluster: Cluster) -> None:
    # A generation that ran on for 3 s would crash the backend: seeing it alive after
    # that shows the generation stopped when the client left.
    head, worker = one_ready_instance(cluster, {"tokens_per_second": 10, "crash_after_tokens": 30})
    r = state.connect(cluster.redis_url)
    recorder = Recorder()
    (backend,) = state.children(worker.popen.pid)

    rid = uuid.uuid4().hex
    gone = recorder.complete(
        head.url,
        "tell me a very long story",
        label="gone",
        stream=True,
        max_tokens=100,
        request_id=rid,
        on_chunk=lambda _: True,  # hang up after the first chunk
    )
    hung_up = time.monotonic()
    assert gone.chunks == 1 and gone.error == "hung up by the test", gone
    task = cancelled_and_released(r, rid)
    released = time.monotonic() - hung_up
    assert "cancelled" in task.result and task.attempt == 1, task
    # The backend would have crashed 3 s into a generation that went on.
    assert stays(lambda: not state.dead(backend), 4.0), "the generation went on"
    (only,) = cluster.model_status("m")["instances"]  # type: ignore[misc, index]
    again = recorder.complete(head.url, "a short one", label="again", max_tokens=5)
    assert again.ok and again.instance == only["instance_id"] and only["state"] == "ready"
    print(f"task cancelled and released {released:.2f}s after the client hung up")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_client_hanging_up_before_its_response_begins_cancels_its_task(
    cluster: Cluster, stream: bool
) -> None:
    head, _ = one_ready_instance(cluster, {"ttft": 30})
    r = state.connect(cluster.redis_url)
    rid = uuid.uuid4().hex
    # A stream's status waits for its first event (up to the 15 s keep-alive interval), so
    # either way the client leaves before anything, headers included, was sent.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{head.url}/v1/completions",
            json={"model": "m", "prompt": "hi", "stream": stream, "max_tokens": 5},
            headers={"X-Request-Id": rid},
            timeout=1.0,
        )
    hung_up = time.monotonic()
    task = cancelled_and_released(r, rid)
    released = time.monotonic() - hung_up
    assert "cancelled" in task.result, task
    # Noticed while waiting, not once the keep-alive interval was over.
    assert released < 5, released
    # A hang-up is routine: no traceback in the head's log.
    assert "Traceback" not in head.log_tail(400), head.log_tail(400)
    print(f"task cancelled and released {released:.2f}s after the client hung up")
