"""sllm against the routers users compare it with, in one run: the dummy backend alone,
vllm-router (Rust, one hop, keeps nothing) and LiteLLM's proxy (Python) in front of one
dummy backend process, and sllm clusters (head, Redis, worker and its own dummy
instance at zero delay; one with a head of --head-processes processes), the systems
interleaved at every level.

    python benchmarks/peers.py [--seconds 5] [--concurrency 1 8 64 256]
                               [--streams 8 64] [--head-processes 2] [--json out.json]

vllm-router and litellm[proxy] come from PyPI, each installed on first use into a venv
of its own under ~/.cache/sllm-bench. Printed per system and level: requests/s, p50 and
p99 latency (non-streaming chat, 16 tokens) or tokens/s (streams of 64 tokens), and the
routing layer's CPU (everything but the backend: the router's processes; sllm's head,
worker and Redis) per request or per token, read from /proc. The load generator's own
ceiling (a raw asyncio responder) comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from serving import (
    BODY,
    PATH,
    load,
    start_cluster,
    start_direct_dummy,
    start_reference,
    stream_load,
)

from sllm.client.launcher import Child, free_port, spawn, wait_healthy

VENVS = Path.home() / ".cache" / "sllm-bench"
PEERS = {"router": ["vllm-router"], "litellm": ["litellm[proxy]"]}


def venv(name: str) -> Path:
    """The bin folder of a venv holding ``PEERS[name]``, made on first use."""
    root = VENVS / name
    if not (root / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        pip = [str(root / "bin" / "pip"), "install", "-q", *PEERS[name]]
        subprocess.run(pip, check=True)
        (root / ".installed").touch()
    return root / "bin"


def start_router(work: Path, backend: str) -> Child:
    port = free_port()
    argv = [
        str(venv("router") / "vllm-router"),
        "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", backend,
        "--policy", "round_robin",
        "--log-level", "warning",
    ]  # fmt: skip
    child = spawn("vllm-router", argv, work / "router.log", f"http://127.0.0.1:{port}")
    wait_healthy(child, 60)
    return child


def start_litellm(work: Path, backend: str) -> Child:
    port = free_port()
    config = work / "litellm.yaml"
    model = {
        "model_name": BODY["model"],
        "litellm_params": {"model": f"openai/{BODY['model']}", "api_base": f"{backend}/v1"},
    }
    config.write_text(json.dumps({"model_list": [model]}))  # YAML reads JSON
    argv = [str(venv("litellm") / "litellm"), "--config", str(config), "--port", str(port)]
    env = {
        "OPENAI_API_KEY": "none",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet at start
        "LITELLM_LOG": "ERROR",
        # Loopback only, as the other systems here: no key to check on any of them.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    child = spawn("litellm", argv, work / "litellm.log", f"http://127.0.0.1:{port}", env)
    wait_healthy(child, 180, "/health/liveliness")
    return child


# -- routing-layer CPU -------------------------------------------------------------------


def cpu_of(pids: list[int], with_children: bool) -> Callable[[], float]:
    """Seconds of CPU the processes (and their children, if asked) used so far."""

    def read() -> float:
        total = 0.0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                procs = [proc, *(proc.children(recursive=True) if with_children else [])]
                for p in procs:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    return read


def sllm_cpu(head: Child, redis: Child, worker: Child) -> Callable[[], float]:
    """The routing layer's CPU: head (all its processes), Redis, and the worker less
    its children, which are the backend."""
    routing = cpu_of([head.popen.pid, redis.popen.pid], True)
    worker_alone = cpu_of([worker.popen.pid], False)
    return lambda: routing() + worker_alone()


def measure(run: Callable[[], dict[str, Any]], cpu: Callable[[], float] | None) -> dict:
    before = cpu() if cpu else 0.0
    result = run()
    if cpu is not None:
        result["routing_cpu_s"] = cpu() - before
    return result


# -- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sllm-peers-") as tmp:
        work = Path(tmp)
        children: list[Child] = []
        try:
            raw = start_reference("raw-responder", work)
            direct = start_direct_dummy(work)
            children += [raw, direct]
            router = start_router(work, direct.url)
            children.append(router)
            litellm = start_litellm(work, direct.url)
            children.append(litellm)
            systems: dict[str, tuple[str, Callable[[], float] | None]] = {
                "client ceiling": (raw.url, None),
                "backend alone": (direct.url, None),
                "vllm-router": (router.url, cpu_of([router.popen.pid], True)),
            }
            for processes in sorted({1, args.head_processes}):
                worker, head, redis = start_cluster(work, head_processes=processes)
                children += [worker, head, redis]
                name = "sllm" if processes == 1 else f"sllm, {processes} head processes"
                systems[name] = (head.url, sllm_cpu(head, redis, worker))
            systems["litellm"] = (litellm.url, cpu_of([litellm.popen.pid], True))
            out: dict[str, Any] = {"non_streaming": {}, "streaming": {}}
            for level in args.concurrency:
                for name, (url, cpu) in systems.items():
                    result = measure(
                        lambda u=url, c=level: asyncio.run(
                            load(f"{u}{PATH}", BODY, c, args.seconds)
                        ),
                        cpu,
                    )
                    out["non_streaming"].setdefault(name, {})[str(level)] = result
                    print_row(name, level, result, streaming=False)
            for level in args.streams:
                for name, (url, cpu) in systems.items():
                    if name == "client ceiling":
                        continue
                    result = measure(
                        lambda u=url, c=level: asyncio.run(
                            stream_load(f"{u}{PATH}", c, args.seconds)
                        ),
                        cpu,
                    )
                    out["streaming"].setdefault(name, {})[str(level)] = result
                    print_row(name, level, result, streaming=True)
            return out
        finally:
            for child in reversed(children):
                child.stop()


def print_row(name: str, level: int, r: dict[str, Any], *, streaming: bool) -> None:
    cpu = r.get("routing_cpu_s")
    if streaming:
        rate, count = r["tokens_per_s"], r["tokens"]
        per = f"{cpu / count * 1000:.3f} ms/token" if cpu is not None and count else "-"
        print(f"| stream | {name} | {level} | {rate:,.0f} tokens/s | | | {per} | {r['errors']} |")
    else:
        rate = r["requests_per_s"]
        per = (
            f"{cpu / r['requests'] * 1000:.2f} ms/req" if cpu is not None and r["requests"] else "-"
        )
        print(
            f"| chat | {name} | {level} | {rate:,.0f} req/s | {r['p50_ms'] or 0:.2f} "
            f"| {r['p99_ms'] or 0:.2f} | {per} | {r['errors']} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 64])
    parser.add_argument(
        "--head-processes", type=int, default=2, help="also an sllm head of this many processes"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; {args.seconds:g} s per system and level")
    print("| mode | system | concurrency | rate | p50 ms | p99 ms | routing CPU | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    out = run(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
