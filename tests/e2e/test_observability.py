"""Metrics, request logs and the dashboard of real head and worker processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus' text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_request_logs(cluster: Cluster) -> None:
    head = cluster.start_head(SLLM_LOG_FORMAT="json")
    worker = cluster.start_worker()
    cluster.deploy("m", backend_config={"startup_delay": 0.3})
    client = cluster.client()
    reply = client.chat.completions.with_raw_response.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_headers={"x-request-id": "req-observed-1"},
    )
    assert reply.headers["x-request-id"] == "req-observed-1"
    streamed = list(client.completions.create(model="m", prompt="a b c", max_tokens=5, stream=True))
    chat_usage = reply.parse().usage
    assert chat_usage is not None
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x")

    def head_metrics() -> str:
        return httpx.get(f"{head.url}/metrics", timeout=5).text

    text = head_metrics()
    chat = {"model": "m", "endpoint": "/v1/chat/completions"}
    assert sample(text, "sllm_requests_total", outcome="ok", **chat) == 1
    assert sample(text, "sllm_request_duration_seconds_count", **chat) == 1
    assert sample(text, "sllm_time_to_first_token_seconds_count", model="m") == 1
    assert sample(text, "sllm_inter_token_latency_seconds_count", model="m") >= 3
    assert sample(text, "sllm_cold_start_seconds_count", model="m", phase="placement") == 1
    # The chat's by its usage; the stream (no usage asked for) one per chunk with choices.
    tokens = chat_usage.completion_tokens + sum(1 for c in streamed if c.choices)
    assert sample(text, "sllm_generated_tokens_total", model="m") == tokens > 2
    wait_until(
        lambda: sample(head_metrics(), "sllm_instances", model="m", state="ready") == 1,
        10,
        "the instances gauge",
    )
    assert "sllm_queue_oldest_age_seconds" in head_metrics()

    work = httpx.get(f"{worker.url}/metrics", timeout=5).text
    for phase in ("process_start", "weight_load", "first_token"):
        assert sample(work, "sllm_cold_start_seconds_count", model="m", phase=phase) == 1, phase
    # The dummy's start-up delay is its "weight load".
    assert sample(work, "sllm_cold_start_seconds_sum", model="m", phase="weight_load") >= 0.3
    assert sample(work, "sllm_worker_memory_total_bytes") > 0
    assert sample(work, "sllm_worker_instances", state="ready") == 1

    lines = [json.loads(line) for line in head.log.read_text().splitlines() if line.startswith("{")]
    mine = [rec for rec in lines if rec.get("request_id") == "req-observed-1"]
    assert len(mine) == 1, lines[-5:]
    record = mine[0]
    assert record["message"] == "request" and record["outcome"] == "ok"
    assert record["model"] == "m" and record["attempt"] == 1
    assert record["instance"].startswith("m-") and record["seconds"] > 0


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_dashboard_shows_models_and_workers_in_a_browser(
    cluster: Cluster, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from sllm.store.catalog import ensure_stored
    from sllm.store.tiers import record_use
    from tests.tiny_models import build_tiny_causal_lm

    # A model the worker has stored, as a backend that loaded it leaves it.
    lm = build_tiny_causal_lm(tmp_path / "lm")
    stored, _ = ensure_stored(lm, cluster.workdir / "models", AutoModelForCausalLM)
    record_use(stored, "tiny-lm")
    head = cluster.start_head()
    # No memory tier, which would hold the model there when the worker starts: the page
    # must show one tier, whatever this machine lets a process lock.
    cluster.start_worker(SLLM_MEMORY_CACHE_GB="0")
    cluster.deploy("dash-model")
    client = cluster.client()
    client.completions.create(model="dash-model", prompt="hi", max_tokens=3)
    # The cold start's first token reaches the head with the worker's next heartbeat.
    wait_until(
        lambda: any(
            s["first_token"] is not None for s in cluster.status()["workers"][0]["cold_starts"]
        ),
        10,
        "the cold start's first token in the heartbeat",
    )
    [worker] = cluster.status()["workers"]
    node = worker["node_id"]
    assert [(c["source"], c["tier"]) for c in worker["cache"]] == [("tiny-lm", "disk")]
    # Where the screenshots go: SLLM_SCREENSHOTS names a folder to keep them in.
    shots = Path(os.environ.get("SLLM_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    url = f"{head.url}/dashboard"

    def browser(width: int, height: int, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "chromium",
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                f"--window-size={width},{height}",
                # Lets the page's first poll land before the DOM is read.
                "--virtual-time-budget=5000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    dom = browser(1366, 900, "--dump-dom").stdout
    assert re.search(r'<tr data-model="dash-model">', dom), dom[-2000:]
    assert f'<tr data-node="{node}">' in dom
    assert "tiny-lm (disk, " in dom
    # Per model over time, on charts with axes and current values.
    for chart in ("rps", "latency", "ttft", "tokens", "queue"):
        assert f'data-chart="{chart}-dash-model"' in dom, chart
    assert ">-10 min</text>" in dom and ">now</text>" in dom
    # Each instance, each cold start with its phases, and what sllm's processes hold.
    assert re.search(r'<tr data-instance="dash-model-[0-9a-f]+"><td>dash-model-', dom)
    start = re.search(r'<tr data-cold-start="dash-model-[0-9a-f]+">(.*?)</tr>', dom)
    assert start is not None, dom[-3000:]
    phases = re.findall(r'<td class="num">([\d.]+)</td>', start.group(1))
    assert len(phases) == 4, start.group(1)  # process start, weight load, ready, first token
    worker_row = re.search(rf'<tr data-node="{node}">(.*?)</tr>', dom)
    assert worker_row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", worker_row.group(1))
    assert re.fullmatch(r"\d+\.\d / \d+\.\d", cells[3]), cells  # memory, GiB used / total
    assert re.fullmatch(r"\d+\.\d", cells[4]) and float(cells[4]) > 0, cells  # sllm's own

    for name, (width, height) in {"laptop": (1366, 900), "phone": (390, 844)}.items():
        screenshot = shots / f"dashboard-{name}.png"
        browser(width, height, f"--screenshot={screenshot}")
        assert screenshot.stat().st_size > 10_000
