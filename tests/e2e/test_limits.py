"""Request limits through real head and worker processes: full queues, deadlines and
keep-alives while a stream waits for its first token."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_a_full_queue_answers_429_with_retry_after(cluster: Cluster) -> None:
    cluster.start_head()
    cluster.start_worker()
    # A slow cold start keeps the first requests queued.
    cluster.deploy("m", backend_config={"startup_delay": 4}, max_queue_length=2)
    head = cluster.head
    assert head is not None
    url = f"{head.url}/v1/chat/completions"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(httpx.post, url, json=CHAT, timeout=60) for _ in range(2)]
        wait_until(lambda: cluster.model_status("m")["queue_length"] == 2, 10, "two queued")
        over = httpx.post(url, json=CHAT, timeout=10)
        assert over.status_code == 429, over.text
        assert over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == "queue_full"
        assert [f.result().status_code for f in waiting] == [200, 200]
    assert httpx.post(url, json=CHAT, timeout=30).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_is_cancelled(cluster: Cluster) -> None:
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m", backend_config={"ttft": 30})
    client = cluster.client()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Request-Timeout": "2"},
        )
    assert err.value.status_code == 504
    assert err.value.code == "deadline_exceeded"
    assert time.monotonic() - started < 6
    # The instance no longer holds it: its slot is free again.
    wait_until(
        lambda: all(i["outstanding"] == 0 for i in cluster.model_status("m")["instances"]),
        10,
        "the cancelled task to be released",
    )
    bad = httpx.post(
        f"{cluster.head.url}/v1/chat/completions",  # type: ignore[union-attr]
        json=CHAT,
        headers={"X-Request-Timeout": "soon"},
        timeout=10,
    )
    assert bad.status_code == 400 and "X-Request-Timeout" in bad.text


def test_a_stream_waiting_for_a_cold_start_gets_keepalives(cluster: Cluster) -> None:
    cluster.start_head(SLLM_STREAM_KEEPALIVE="0.3")
    cluster.start_worker()
    cluster.deploy("m", backend_config={"startup_delay": 2})
    head = cluster.head
    assert head is not None
    lines = []
    with httpx.stream(
        "POST", f"{head.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30
    ) as resp:
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        lines = [line for line in resp.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 3 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
