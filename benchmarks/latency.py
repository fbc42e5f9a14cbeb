"""Latency of one non-streamed chat request through the whole cluster, against the same
request sent straight to the dummy backend, measured in one run on this machine.

    python benchmarks/latency.py [--requests 200] [--json out.json]

Starts its own redis-server, head and worker on free ports and stops them at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from sllm.launcher import free_port, start_head, start_redis, start_worker

BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": "How fast is the serving path?"}],
    "max_tokens": 16,
}


def timed(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    resp = client.post(url, json=BODY)
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    return elapsed


def measure(client: httpx.Client, urls: list[str], n: int) -> list[list[float]]:
    """``n`` timings per URL, taken in turn so that both paths see the same noise."""
    samples: list[list[float]] = [[] for _ in urls]
    for _ in range(n):
        for i, url in enumerate(urls):
            samples[i].append(timed(client, url))
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(len(ordered) * 0.9) - 1] * 1000,
        "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000,
    }


def backend_port(client: httpx.Client, head_url: str) -> int:
    for worker in client.get(f"{head_url}/status").json()["workers"]:
        for inst in worker["instances"]:
            if inst.get("model") == "bench" and inst.get("state") == "ready":
                return int(inst["port"])
    raise LookupError("no ready instance reported yet")


def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis = start_redis(free_port(), work / "redis")
        head = worker = None
        try:
            env = {"SLLM_LOG_LEVEL": "warning"}
            head = start_head(free_port(), redis.url, work / "head.log", env)
            worker = start_worker(
                free_port(), head.url, work, {**env, "SLLM_HEARTBEAT_INTERVAL": "0.5"}
            )
            with httpx.Client(timeout=30) as client:
                scaling = {"min_instances": 1, "max_instances": 1}
                config = {"model": "bench", "backend": "dummy", "auto_scaling_config": scaling}
                client.post(f"{head.url}/register", json=config).raise_for_status()
                deadline = time.monotonic() + 30
                while True:
                    try:
                        port = backend_port(client, head.url)
                        break
                    except LookupError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                cluster_url = f"{head.url}/v1/chat/completions"
                direct_url = f"http://127.0.0.1:{port}/v1/chat/completions"
                urls = [cluster_url, direct_url]
                measure(client, urls, 20)  # warm both paths' connections
                through, direct = (summary(s) for s in measure(client, urls, n))
        finally:
            for child in (worker, head, redis):
                if child is not None:
                    child.stop()
    return {
        "requests": n,
        "through_cluster": through,
        "direct_to_backend": direct,
        "added_median_ms": through["median_ms"] - direct["median_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.requests)
    print(f"{'path':<20}{'median ms':>12}{'p90 ms':>10}{'p99 ms':>10}")
    for name in ("through_cluster", "direct_to_backend"):
        s = result[name]
        print(f"{name:<20}{s['median_ms']:>12.2f}{s['p90_ms']:>10.2f}{s['p99_ms']:>10.2f}")
    added = result["added_median_ms"]
    print(f"added by the cluster (median): {added:.2f} ms over {args.requests} requests")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
