"""A worker SIGKILLed mid-stream: the stream resumes on another instance, and the client
sees one uninterrupted stream with nothing duplicated or lost."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from sllm.client.launcher import Child
from tests.e2e.conftest import wait_until
from tests.faults.conftest import Cluster

pytestmark = pytest.mark.timeout(120)

# 25 words a second: a 40-word answer takes long enough to be cut in the middle.
SLOW = {"tokens_per_second": 25.0, "default_max_tokens": 40}
MESSAGES = [{"role": "user", "content": "tell me a long story about the sea"}]


@pytest.fixture
def two_instances(cluster: Cluster) -> tuple[Cluster, list[Child]]:
    cluster.start_head()
    workers = [cluster.start_worker(), cluster.start_worker()]
    cluster.deploy(
        "m",
        backend_config=SLOW,
        auto_scaling_config={"min_instances": 2, "max_instances": 2, "keep_alive": 60},
    )
    wait_until(lambda: ready_instances(cluster) == 2, 30, "two ready instances")
    return cluster, workers


def ready_instances(cluster: Cluster) -> int:
    status = cluster.model_status("m")
    return sum(1 for i in (status or {}).get("instances", []) if i["state"] == "ready")


def worker_serving(cluster: Cluster, workers: list[Child], instance_id: str) -> Child:
    for w in cluster.status()["workers"]:
        if any(i["instance_id"] == instance_id for i in w["instances"]):
            return next(c for c in workers if c.url == w["url"])
    raise AssertionError(f"no worker runs {instance_id}")


def events(head: Child, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The SSE events of one streamed request, as dicts, until [DONE]."""
    with httpx.stream("POST", f"{head.url}{path}", json=body, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return
            yield json.loads(line[6:])
    raise AssertionError("the stream ended without [DONE]")


def text_of(event: dict[str, Any], chat: bool) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    return (
        str((choices[0].get("delta") or {}).get("content") or "")
        if chat
        else str(choices[0].get("text") or "")
    )


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_stream_resumes_on_another_instance_when_its_worker_is_killed(
    two_instances: tuple[Cluster, list[Child]], path: str
) -> None:
    cluster, workers = two_instances
    head = cluster.head
    assert head is not None
    chat = path == "/v1/chat/completions"
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 40,
        "seed": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update({"messages": MESSAGES} if chat else {"prompt": "once upon a time by the sea"})

    whole = list(events(head, path, body))
    expected = "".join(text_of(e, chat) for e in whole)
    expected_usage = whole[-1]["usage"]
    assert expected_usage["completion_tokens"] >= 20, "the story should be long enough to cut"

    got: list[dict[str, Any]] = []
    killed_at = 0.0
    for event in events(head, path, body):
        got.append(event)
        assert "error" not in event, event
        if not killed_at and len("".join(text_of(e, chat) for e in got).split()) >= 8:
            victim = worker_serving(cluster, workers, event["system_fingerprint"])
            victim.popen.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
    assert killed_at, "the stream ended before the worker could be killed"
    assert "".join(text_of(e, chat) for e in got) == expected
    assert got[-1]["usage"] == expected_usage
    assert len({e["id"] for e in got}) == 1  # one stream, as the client sees it
    fingerprints = [e["system_fingerprint"] for e in got]
    assert len(set(fingerprints)) == 2, "the end came from another instance"
    finishes = [c["finish_reason"] for e in got for c in e["choices"] if c["finish_reason"]]
    assert finishes == [whole_finish(whole)]
    if chat:
        assert sum(1 for e in got for c in e["choices"] if "role" in c["delta"]) == 1


def whole_finish(events_: list[dict[str, Any]]) -> str:
    return next(c["finish_reason"] for e in events_ for c in e["choices"] if c["finish_reason"])


def backend_process(instance_id: str) -> psutil.Process:
    """An instance's backend process: the one writing its log (a process from the
    warm pool names no instance on its command line)."""

    def writes_its_log(proc: psutil.Process) -> bool:
        try:
            return any(instance_id in f.path for f in proc.open_files())
        except psutil.Error:
            return False

    (found,) = [p for p in psutil.process_iter() if writes_its_log(p)]
    return found


def test_a_stream_whose_backend_process_dies_resumes_at_once(
    two_instances: tuple[Cluster, list[Child]],
) -> None:
    """The worker lives on and sends the task back to the queue: its gateway is told
    at once and goes on from what it relayed on the other instance, busy with another
    stream, instead of waiting for the retry, which must run alone (on a new instance:
    13 s here before)."""
    cluster, _ = two_instances
    head = cluster.head
    assert head is not None
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 40, "seed": 5, "stream": True}
    whole = "".join(text_of(e, True) for e in events(head, "/v1/chat/completions", body))
    other = {**body, "max_tokens": 150, "ignore_eos": True}
    got: list[tuple[float, dict[str, Any]]] = []
    for event in events(head, "/v1/chat/completions", body):
        got.append((time.monotonic(), event))
        if len(got) == 3:  # the other instance gets a stream of its own
            busy = threading.Thread(
                target=lambda: list(events(head, "/v1/chat/completions", other))
            )
            busy.start()
        if len(got) == 10:
            instance = event["system_fingerprint"]
            backend_process(instance).kill()
    assert "".join(text_of(e, True) for _, e in got) == whole
    assert len({e["system_fingerprint"] for _, e in got}) == 2
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(got)]
    assert max(gaps) < 1.5, max(gaps)
    busy.join(30)


def test_a_stream_that_cannot_be_resumed_ends_with_an_error_event(
    two_instances: tuple[Cluster, list[Child]],
) -> None:
    cluster, workers = two_instances
    head = cluster.head
    assert head is not None
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 40, "n": 2, "stream": True}
    got: list[dict[str, Any]] = []
    killed_at = 0.0
    for event in events(head, "/v1/chat/completions", body):
        got.append(event)
        if not killed_at and len(got) >= 10:
            worker_serving(cluster, workers, event["system_fingerprint"]).popen.send_signal(
                signal.SIGKILL
            )
            killed_at = time.monotonic()
    assert killed_at
    error = got[-1].get("error")
    assert error is not None and error["code"] == "stream_interrupted", got[-1]
    assert time.monotonic() - killed_at < 10
