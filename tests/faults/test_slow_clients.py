"""Clients that stop reading their stream: what they cost the head, the worker and the
backend is bounded (flow control pauses generation), and past the stall timeout their
requests are cancelled, with a log line and a metric. A fast client beside them keeps
its speed."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.e2e.test_observability import sample
from tests.faults import state
from tests.faults.state import K

STALL = 30.0
LONG = 100_000


def silent_stream(url: str, prompt: str) -> socket.socket:
    """A streamed completion of LONG tokens whose client reads nothing of the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    # A small receive buffer, so the head's writes stall soon, as over a real network.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # ignore_eos: the dummy generates every token asked for.
    request = {"model": "m", "prompt": prompt, "max_tokens": LONG, "stream": True}
    body = json.dumps({**request, "ignore_eos": True}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return sock


def slow_clients(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sample(text, "sllm_requests_total", outcome="slow_client")


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@pytest.mark.timeout(300)
def test_six_clients_that_read_nothing_cost_bounded_memory_and_are_cancelled(
    cluster: Cluster,
) -> None:
    head = cluster.start_head(SLLM_STREAM_STALL_TIMEOUT=str(STALL))
    worker = cluster.start_worker()
    cluster.deploy(
        "m",
        auto_scaling_config={"min_instances": 1, "max_instances": 1, "keep_alive": 60},
        backend_config={"context_length": 200_000},
    )
    cluster.wait_ready("m")
    assert httpx.post(
        f"{head.url}/v1/completions", json={"model": "m", "prompt": "warm", "max_tokens": 4}
    ).is_success
    head_proc = psutil.Process(head.popen.pid)
    idle = head_proc.memory_info().rss
    backend = next(
        p for p in psutil.Process(worker.popen.pid).children(recursive=True)
        if "--instance-id" in p.cmdline()
    )  # fmt: skip

    silent = [silent_stream(head.url, f"reader {i} stops") for i in range(6)]
    try:
        # Generation fills the kernel's socket buffers (the head's to each client: up to
        # 4 MB) and the flow-control window, then pauses: the backend stops working.
        opened = time.monotonic()

        def paused() -> bool:
            before = cpu_seconds(backend.pid)
            time.sleep(1.0)
            return cpu_seconds(backend.pid) - before < 0.05

        wait_until(paused, 90, "generation to pause", interval=0)
        paused_after = time.monotonic() - opened
        # And it stays paused (a busy machine can starve the backend for a second).
        before = cpu_seconds(backend.pid)
        time.sleep(5.0)
        held_cpu = cpu_seconds(backend.pid) - before
        grown = head_proc.memory_info().rss - idle
        # Paused by flow control, not ended: all six still run, none was cancelled yet.
        assert slow_clients(head.url) == 0
        assert cluster.model_status("m")["in_flight"] == 6  # type: ignore[index]
        assert held_cpu < 0.25, f"the backend generated on ({held_cpu:.2f} s CPU in 5 s)"
        assert grown < 50 * 2**20, f"the head grew {grown / 2**20:.1f} MiB"

        # A fast client beside them is served in full.
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{head.url}/v1/completions",
            json={
                "model": "m",
                "prompt": "fast",
                "max_tokens": 2000,
                "stream": True,
                "ignore_eos": 1,
            },
            timeout=60,
        ) as fast:
            chunks = sum(1 for line in fast.iter_lines() if line.startswith("data: {"))
        fast_seconds = time.monotonic() - started

        # Past the stall timeout each silent request is cancelled.
        wait_until(
            lambda: slow_clients(head.url) == 6,
            STALL + 20,
            "the six silent requests to be cancelled",
        )
    finally:
        for sock in silent:
            sock.close()
    time.sleep(1.0)
    after = head_proc.memory_info().rss - idle
    print(
        f"head grew {grown / 2**20:.1f} MiB for six silent streams ({after / 2**20:.1f} MiB "
        f"once they were cancelled); generation paused {paused_after:.1f} s after they "
        f"opened; a fast stream of {chunks} chunks beside them took {fast_seconds:.2f} s"
    )
    assert after < 50 * 2**20, f"the head kept {after / 2**20:.1f} MiB"
    assert chunks >= 2000
    logs = head.log_tail(2000)
    assert logs.count(f"its client read nothing for {STALL:g} s") == 6, logs
    # Cancelled at the worker too: its instance is idle again.
    wait_until(
        lambda: cluster.model_status("m")["instances"][0]["outstanding"] == 0,  # type: ignore[index]
        20,
        "the instance to be idle",
    )


@pytest.mark.timeout(120)
def test_a_stream_nobody_reads_any_more_is_given_up_by_its_worker(cluster: Cluster) -> None:
    # The head that both serves the silent client and dispatched its task dies: no
    # gateway acknowledges its chunks, so its worker gives up at twice the stall timeout
    # (2 x 2 s) instead of holding the instance's slot until the deadline (60 s).
    head = cluster.start_head(SLLM_STREAM_STALL_TIMEOUT="2")
    cluster.start_worker()
    cluster.deploy(
        "m",
        auto_scaling_config={"min_instances": 1, "max_instances": 1, "keep_alive": 60},
        backend_config={"context_length": 200_000},
    )
    (instance,) = cluster.wait_ready("m")
    r = state.connect(cluster.redis_url)
    sock = silent_stream(head.url, "read by nobody")
    try:
        task = wait_until(lambda: state.running(r), 10, "the task to run")[0]
        # Generation runs until the window is full (the head's socket buffers first).
        wait_until(
            lambda: int(r.hget(K.task(task.id), "acked").partition(":")[2] or 0) > 0,
            30,
            "the first acknowledgement",
        )
        head.popen.send_signal(signal.SIGKILL)
        head.popen.wait(5)
        killed = time.monotonic()
        wait_until(lambda: state.tasks(r)[task.id].state == "failed", 30, "the worker to give up")
        gave_up = time.monotonic() - killed
    finally:
        sock.close()
    result = json.loads(state.tasks(r)[task.id].result)
    assert result["data"]["error"]["code"] == "slow_client", result
    assert int(r.hget(K.instance(instance["instance_id"]), "outstanding")) == 0
    print(f"the worker gave the stream up {gave_up:.1f} s after its head died")
    assert gave_up < 20
