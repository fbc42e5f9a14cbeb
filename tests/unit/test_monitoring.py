"""examples/monitoring: Prometheus scrapes heads and workers, and every metric the Grafana
dashboard queries is one that a head or a worker serves on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from sllm.metrics import HeadMetrics, WorkerMetrics, exposition

HERE = Path(__file__).resolve().parents[2] / "examples" / "monitoring"


def served() -> set[str]:
    """Metric names as /metrics declares them (# TYPE lines), head and worker."""
    text = (exposition(HeadMetrics().registry) + exposition(WorkerMetrics().registry)).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def test_prometheus_scrapes_the_heads_and_the_workers() -> None:
    config = yaml.safe_load((HERE / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"sllm-head", "sllm-worker"}
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs.values())


def test_every_metric_the_dashboard_queries_is_served() -> None:
    dashboard = json.loads((HERE / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 20
    queried = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bsllm_[a-z_]+", expr)
    }
    missing = sorted(queried - served())
    assert missing == [], f"the dashboard queries metrics nothing serves: {missing}"
    # What the issue asked of it: rate, latency, time to first token, tokens/s, queue.
    for needed in (
        "sllm_requests_total",
        "sllm_request_duration_seconds",
        "sllm_time_to_first_token_seconds",
        "sllm_generated_tokens_total",
        "sllm_queue_length",
        "sllm_cold_start_seconds",
    ):
        assert needed in queried, needed
    # Grafana can import it: an id, a datasource variable every panel uses.
    assert dashboard["uid"] and dashboard["panels"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
