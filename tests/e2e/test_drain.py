"""`sllm worker drain NODE`: the worker gets nothing new, what runs there finishes, its
model moves to another worker, and it reports drained; `undrain` gives it work again."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.conftest import Cluster, wait_until

pytestmark = pytest.mark.e2e


def sllm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sllm", *args], capture_output=True, text=True, timeout=120
    )


def worker_entry(cluster: Cluster, node_id: str) -> dict[str, object]:
    return next(w for w in cluster.status()["workers"] if w["node_id"] == node_id)


def test_a_drained_worker_finishes_its_work_and_hands_its_model_on(cluster: Cluster) -> None:
    head = cluster.start_head()
    workers = [cluster.start_worker(), cluster.start_worker()]
    cluster.deploy(
        "m",
        auto_scaling_config={"min_instances": 1, "max_instances": 1, "keep_alive": 60},
        backend_config={"tokens_per_second": 10},
    )
    (instance,) = cluster.wait_ready("m")
    node = instance["node_id"]
    client = cluster.client()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Two seconds of tokens, running when the drain begins.
        running = pool.submit(
            lambda: list(
                client.completions.create(
                    model="m",
                    prompt="long",
                    max_tokens=20,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
            )
        )
        wait_until(lambda: cluster.status()["models"][0]["instances"][0].get("outstanding"),
                   10, "the request to run")  # fmt: skip
        drained = sllm("worker", "drain", node, "--head-url", head.url, "--timeout", "60")
        chunks = running.result(timeout=60)
    assert drained.returncode == 0 and f"{node}: drained" in drained.stdout, drained
    # The stream that ran there finished whole.
    assert sum(len(c.choices[0].text) > 0 for c in chunks if c.choices) == 20
    assert chunks[-1].choices[0].finish_reason == "length"
    # Its model went to the other worker, which serves it; the drained one runs nothing.
    (moved,) = cluster.wait_ready("m")
    assert moved["node_id"] != node
    assert client.completions.create(model="m", prompt="again", max_tokens=2).choices[0].text
    entry = worker_entry(cluster, node)
    assert entry["drain"] == "drained" and entry["instances"] == [] and entry["backends"] == []
    (drained_worker,) = [w for w in workers if w.url == entry["url"]]
    assert drained_worker.alive()  # drained, not stopped
    assert httpx.get(f"{drained_worker.url}/health", timeout=5).json()["draining"] is True
    # Undone: it advertises its backends again and is no longer draining.
    undone = sllm("worker", "undrain", node, "--head-url", head.url)
    assert undone.returncode == 0, undone
    wait_until(lambda: worker_entry(cluster, node)["backends"], 10, "its backends again")
    assert worker_entry(cluster, node)["drain"] is None
    assert httpx.get(f"{drained_worker.url}/health", timeout=5).json()["draining"] is False


def test_drain_refuses_unknown_and_malformed_workers(cluster: Cluster) -> None:
    head = cluster.start_head()
    unknown = httpx.post(f"{head.url}/workers/worker-99/drain", timeout=5)
    assert unknown.status_code == 404 and "no worker 'worker-99'" in unknown.text
    malformed = httpx.post(f"{head.url}/workers/a%20b/drain", timeout=5)
    assert malformed.status_code == 400
    cli = sllm("worker", "drain", "worker-99", "--head-url", head.url)
    assert cli.returncode == 1 and "no worker 'worker-99'" in cli.stderr
    assert cluster.status()["workers"] == []


def test_sigterm_lets_a_long_request_finish_within_the_drain_timeout(cluster: Cluster) -> None:
    """The path Kubernetes takes: SIGTERM drains as `sllm worker drain` does, and the
    request running there finishes whole though it outlasts uvicorn's usual 10 s."""
    cluster.start_head()
    worker = cluster.start_worker(SLLM_DRAIN_TIMEOUT="30")
    cluster.deploy(
        "m",
        auto_scaling_config={"min_instances": 1, "max_instances": 1, "keep_alive": 60},
        backend_config={"tokens_per_second": 10},
    )
    cluster.wait_ready("m")
    client = cluster.client()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Thirteen seconds of tokens.
        running = pool.submit(
            lambda: list(
                client.completions.create(
                    model="m",
                    prompt="long",
                    max_tokens=130,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
            )
        )
        wait_until(lambda: cluster.status()["models"][0]["instances"][0].get("outstanding"),
                   10, "the request to run")  # fmt: skip
        worker.popen.send_signal(signal.SIGTERM)
        wait_until(
            lambda: (w := cluster.status()["workers"]) and w[0]["drain"] == "draining",
            10,
            "the head to see the worker draining",
        )
        chunks = running.result(timeout=60)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == 130 and chunks[-1].choices[0].finish_reason == "length", (
        chunks[-1],
        cluster.logs(),
    )
    # Served by one instance: it finished there rather than resuming elsewhere.
    assert len({c.system_fingerprint for c in chunks}) == 1
    # Then it stops by itself (uvicorn ends with the signal it was sent).
    assert worker.popen.wait(30) in (0, -signal.SIGTERM)
