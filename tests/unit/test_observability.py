"""The dashboard's recent traffic, log line formats and metric names."""

from __future__ import annotations

import json
import logging

from sllm.edge.serving import _JsonFormatter, _TextFormatter, log_fields
from sllm.head.recent import Recent
from sllm.metrics import HeadMetrics, WorkerMetrics


def test_recent_traffic_is_bucketed_and_forgets_the_old() -> None:
    recent = Recent(bucket_seconds=5, window_seconds=60)
    recent.request(1000.0, 0.2, ok=True)
    recent.request(1001.0, 0.4, ok=False)
    recent.cold_start(1002.0, 3.0)
    points = recent.series(1004.0)
    assert len(points) == 12 and points[-1]["t"] == 1000.0
    assert points[-1]["rps"] == 2 / 5 and points[-1]["errors_per_s"] == 1 / 5
    assert abs(points[-1]["latency_s"] - 0.3) < 1e-9
    assert points[-1]["cold_starts"] == 1 and points[-1]["cold_start_s"] == 3.0
    assert all(p["rps"] == 0 for p in points[:-1])
    recent.request(1100.0, 0.1, ok=True)  # more than a window later
    assert all(p["rps"] == 0 for p in recent.series(1100.0)[:-1])
    assert 1000 not in recent._buckets


def record(**fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("sllm.head.gateway", logging.INFO, "x", 1, "request", None, None)
    rec.fields = log_fields(**fields)["fields"]
    return rec


def test_log_lines_carry_their_fields_as_json_or_key_value() -> None:
    line = json.loads(_JsonFormatter().format(record(request_id="r1", seconds=0.5)))
    assert line["message"] == "request" and line["request_id"] == "r1" and line["seconds"] == 0.5
    assert line["level"] == "INFO" and line["logger"] == "sllm.head.gateway"
    text = _TextFormatter("%(levelname)s %(message)s").format(record(request_id="r1"))
    assert text == "INFO request request_id=r1"


def test_metric_names_follow_prometheus_conventions() -> None:
    for metrics in (HeadMetrics(), WorkerMetrics()):
        for family in metrics.registry.collect():
            assert family.name.startswith("sllm_"), family.name
            # prometheus-client adds _total to counters itself; durations must say seconds.
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name


def test_each_models_recent_traffic_has_percentiles_tokens_and_queue() -> None:
    recent = Recent(bucket_seconds=5, window_seconds=60)
    for i in range(100):  # 1 ms .. 100 ms, one each
        recent.request(1001.0, (i + 1) / 1000, ok=i != 0, model="m", ttft=0.05, tokens=3)
    recent.request(1001.0, 9.0, ok=True)  # a request of no model: the head's series only
    recent.queue(1002.0, "m", 7)
    recent.queue(1003.0, "m", 4)
    series = recent.model_series(1004.0, ["m", "quiet"])
    assert len(series["m"]) == 12 and all(p["rps"] == 0 for p in series["quiet"])
    point = series["m"][-1]
    assert point["rps"] == 100 / 5 and point["errors_per_s"] == 1 / 5
    assert point["tokens_per_s"] == 300 / 5 and point["queue"] == 7
    # Within the bins' resolution (a tenth of a decade).
    assert 0.040 <= point["p50_s"] <= 0.063
    assert 0.079 <= point["p99_s"] <= 0.126
    assert 0.040 <= point["ttft_p50_s"] <= 0.063
    assert series["m"][0]["p50_s"] == 0.0  # no samples
    assert recent.series(1004.0)[-1]["rps"] == 101 / 5
