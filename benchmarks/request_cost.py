"""What one request and one streamed token cost the cluster: Redis commands (by command)
and bytes, and CPU of the head, the worker and Redis, over a steady run against the
dummy backend at zero delay.

    python benchmarks/request_cost.py [--seconds 10] [--concurrency 8]

Non-streaming chat of 16 tokens, then streams of 64 tokens; each figure is a delta over
the run divided by the requests (or tokens) it served.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import redis
from serving import BODY, PATH, load, start_cluster, stream_load

from sllm.client.launcher import Child


def snapshot(r: redis.Redis, procs: dict[str, Child]) -> dict[str, Any]:
    stats = r.info("stats")
    commands = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in r.info("commandstats").items()
    }
    cpu = {}
    for name, child in procs.items():
        times = psutil.Process(child.popen.pid).cpu_times()
        cpu[name] = times.user + times.system
    return {
        "in": stats["total_net_input_bytes"],
        "out": stats["total_net_output_bytes"],
        "commands": commands,
        "cpu": cpu,
    }


def cost(
    r: redis.Redis,
    procs: dict[str, Child],
    unit: str,
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    count_of: Callable[[dict[str, Any]], int],
) -> None:
    before = snapshot(r, procs)
    result = asyncio.run(run())
    after = snapshot(r, procs)
    n = count_of(result)
    calls = {
        c: after["commands"][c] - before["commands"].get(c, 0)
        for c in after["commands"]
        if after["commands"][c] > before["commands"].get(c, 0)
    }
    # Less the commands the snapshots sent themselves (two INFOs each).
    calls["info"] = calls.get("info", 0) - 2
    print(f"\nper {unit} ({n:,} {unit}s, {result.get('errors', 0)} errors)")
    print(f"  Redis commands: {sum(calls.values()) / n:.2f}")
    for command, value in sorted(calls.items(), key=lambda kv: -kv[1]):
        if value / n >= 0.01:
            print(f"    {command:<12}{value / n:8.2f}")
    print(f"  Redis bytes in / out: {(after['in'] - before['in']) / n:,.0f} / "
          f"{(after['out'] - before['out']) / n:,.0f}")  # fmt: skip
    for name in procs:
        spent = (after["cpu"][name] - before["cpu"][name]) / n * 1000
        print(f"  CPU {name:<7}{spent:8.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sllm-cost-") as tmp:
        worker, head, server = start_cluster(Path(tmp))
        try:
            r = redis.Redis.from_url(server.url)
            procs = {"head": head, "worker": worker, "redis": server}
            url, c, s = f"{head.url}{PATH}", args.concurrency, args.seconds
            cost(r, procs, "request", lambda: load(url, BODY, c, s), lambda x: x["requests"])
            cost(r, procs, "token", lambda: stream_load(url, c, s), lambda x: x["tokens"])
        finally:
            for child in (worker, head, server):
                child.stop()


if __name__ == "__main__":
    main()
