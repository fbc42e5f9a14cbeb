"""What the control plane costs as models and workers grow, at idle.

    python benchmarks/control_plane.py [--models 10 100 1000] [--workers 1 10 50]
                                       [--seconds 15] [--json out.json]

For each model count, a fresh Redis and head; the models are deployed (dummy backend,
scale-to-zero, none started) beside one hot model that a real worker serves. Then, for
each worker count, that real worker and simulated ones (one process of small aiohttp
apps speaking the real heartbeat protocol at the worker's default interval and
answering the head's health probes) run for ``--seconds`` while the table is read:
``/v1/models`` and ``/status`` latency, the idle head's CPU (from /proc), Redis commands
per second and connected clients (INFO), and the latency of a request to the hot model
(dispatch at this many models).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import httpx
import redis

from sllm.client.launcher import Child, free_port, start_head, start_redis, start_worker

HOT = "hot"
BEAT_SECONDS = 15.0  # the worker's default heartbeat_interval


# -- simulated workers -----------------------------------------------------------------


async def simulated_worker(head: str, index: int, stop: asyncio.Event) -> None:
    """A worker with no instances: answers /health, heartbeats like the real one."""
    app = aiohttp.web.Application()
    app.router.add_get("/health", lambda _: aiohttp.web.json_response({"status": "ok"}))
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]  # the kernel's pick: no race with other processes
    payload: dict[str, Any] = {
        "node_id": None,
        "url": f"http://127.0.0.1:{port}",
        "resources": {
            "cpu_count": 16,
            "cpu_percent": 1.0,
            "memory_total": 128 << 30,
            "memory_available": 120 << 30,
            "gpus": [],
        },
        "backends": ["dummy"],
        "instances": [],
        "storage_path": f"/tmp/simulated-{index}",
    }
    # Spread over the interval, as workers started at different times are.
    await asyncio.sleep(BEAT_SECONDS * index / 50 % BEAT_SECONDS)
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.post(f"{head}/heartbeat", json=payload) as resp:
                    payload["node_id"] = (await resp.json())["node_id"]
            except (aiohttp.ClientError, KeyError, ValueError) as exc:
                print(f"simulated worker {index}: {exc}", file=sys.stderr)
            try:
                await asyncio.wait_for(stop.wait(), BEAT_SECONDS)
            except TimeoutError:
                pass
    await runner.cleanup()


def simulated_main(head: str, count: int) -> None:
    async def run() -> None:
        stop = asyncio.Event()
        workers = [asyncio.create_task(simulated_worker(head, i, stop)) for i in range(count)]
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        stop.set()
        await asyncio.gather(*workers)

    asyncio.run(run())


# -- measuring ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_get(client: httpx.Client, path: str, times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return out


def dispatch_ms(client: httpx.Client, times: int) -> list[float]:
    body = {"model": HOT, "prompt": "hi", "max_tokens": 4}
    out = []
    for _ in range(times):
        started = time.perf_counter()
        client.post("/v1/completions", json=body).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return out


def deploy(client: httpx.Client, model: str, min_instances: int) -> None:
    config = {
        "model": model,
        "backend": "dummy",
        "auto_scaling_config": {"min_instances": min_instances, "max_instances": 1},
    }
    client.post("/register", json=config).raise_for_status()


def measure(client: httpx.Client, head: Child, r: redis.Redis, seconds: float) -> dict[str, float]:
    commands = r.info("stats")["total_commands_processed"]
    cpu, started = cpu_seconds(head.popen.pid), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    idle_cpu = (cpu_seconds(head.popen.pid) - cpu) / elapsed
    # Commands over the idle window only: the probes below add their own.
    per_second = (r.info("stats")["total_commands_processed"] - commands - 1) / elapsed
    models = timed_get(client, "/v1/models", 20)
    status = timed_get(client, "/status", 10)
    dispatch = dispatch_ms(client, 20)
    return {
        "v1_models_p50_ms": statistics.median(models),
        "v1_models_max_ms": max(models),
        "status_p50_ms": statistics.median(status),
        "status_max_ms": max(status),
        "head_cpu_pct": idle_cpu * 100,
        "redis_cmds_per_s": per_second,
        # Less this benchmark's own connection.
        "redis_clients": r.info("clients")["connected_clients"] - 1,
        "dispatch_p50_ms": statistics.median(dispatch),
    }


def run_models(count: int, worker_counts: list[int], seconds: float, root: Path) -> list[dict]:
    rows = []
    redis_port = free_port()
    store = start_redis(redis_port, root / f"redis-{count}")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {"SLLM_LOG_LEVEL": "warning"}
    head = start_head(free_port(), redis_url, root / f"head-{count}.log", env)
    simulated: list[Any] = []
    worker = None
    try:
        client = httpx.Client(base_url=head.url, timeout=60)
        deploy(client, HOT, 1)
        started = time.monotonic()
        for i in range(count - 1):
            deploy(client, f"model-{i:05d}", 0)
        deploy_s = time.monotonic() - started
        worker = start_worker(free_port(), head.url, root / f"worker-{count}", env)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.post(
                    "/v1/completions", json={"model": HOT, "prompt": "hi", "max_tokens": 1}
                ).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        running = 1
        for workers in worker_counts:
            if workers > running:
                simulated.append(spawn_simulated(head.url, workers - running))
                running = workers
                time.sleep(BEAT_SECONDS + 1)  # every simulated worker has beaten once
            row = {"models": count, "workers": workers, "deploy_s": deploy_s}
            row.update(measure(client, head, r, seconds))
            print_row(row)
            rows.append(row)
    finally:
        for proc in simulated:
            proc.stdin.close()
            proc.wait(timeout=30)
        if worker is not None:
            worker.stop()
        head.stop()
        store.stop()
    return rows


def spawn_simulated(head: str, count: int) -> Any:
    import subprocess

    return subprocess.Popen(
        [sys.executable, __file__, "--simulated", head, str(count)], stdin=subprocess.PIPE
    )


COLUMNS = [
    ("models", "models", "{:d}"),
    ("workers", "workers", "{:d}"),
    ("v1_models_p50_ms", "/v1/models p50 ms", "{:.1f}"),
    ("v1_models_max_ms", "max", "{:.1f}"),
    ("status_p50_ms", "/status p50 ms", "{:.1f}"),
    ("status_max_ms", "max", "{:.1f}"),
    ("head_cpu_pct", "idle head % core", "{:.1f}"),
    ("redis_cmds_per_s", "Redis cmds/s", "{:.0f}"),
    ("redis_clients", "Redis clients", "{:d}"),
    ("dispatch_p50_ms", "dispatch p50 ms", "{:.2f}"),
]


def print_row(row: dict[str, Any]) -> None:
    if not getattr(print_row, "header", False):
        print("| " + " | ".join(c[1] for c in COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        print_row.header = True  # type: ignore[attr-defined]
    print("| " + " | ".join(f.format(row[k]) for k, _, f in COLUMNS) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--simulated", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulated:
        simulated_main(args.simulated[0], int(args.simulated[1]))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="sllm-control-plane-") as tmp:
        for count in args.models:
            rows += run_models(count, sorted(args.workers), args.seconds, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
