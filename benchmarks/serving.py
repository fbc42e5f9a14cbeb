"""What the serving path costs: the cluster (head -> Redis -> dispatcher -> worker ->
dummy backend at zero delay) against the dummy backend called directly and against a
minimal single-hop uvicorn app returning the same JSON, all measured in one run.

    python benchmarks/serving.py [--seconds 5] [--concurrency 1 8 64 256] [--json out.json]

Non-streaming: requests/s and latency p50/p99 per concurrency. Streaming: tokens/s and
inter-token latency at concurrency 1 and 8. A raw asyncio responder measures the load
generator's own ceiling first, so that the client is never what limits the figures.

A path skeleton measures what the cluster's shape costs before any of its logic: a head
and a worker process that do nothing but what every request must (the head stores the
task in Redis and calls the worker, the worker calls the same dummy backend, answers and
then stores the result), as plain ASGI apps on uvicorn with aiohttp and redis-py, the
cluster's own libraries. No implementation of this design on these libraries does less
per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from sllm.backends.base import LaunchSpec
from sllm.backends.registry import get_backend
from sllm.client.launcher import (
    Child,
    free_port,
    spawn,
    start_head,
    start_redis,
    start_worker,
    wait_healthy,
    wait_warm_pools,
)

MODEL = "bench"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "How fast is the serving path?"}],
    "max_tokens": 16,
}
STREAM_BODY = {**BODY, "max_tokens": 64, "stream": True}
PATH = "/v1/chat/completions"


# -- the references --------------------------------------------------------------------


def floor_app_main(port: int) -> None:
    """A minimal single-hop app: one uvicorn process answering the dummy's JSON."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    canned = json.dumps(
        {
            "id": "chatcmpl-floor",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "the a of and to in is it"},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22},
        }
    ).encode()
    app = FastAPI()

    @app.post(PATH)
    async def chat() -> Response:
        return Response(canned, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def raw_responder_main(port: int) -> None:
    """The load generator's ceiling: canned HTTP/1.1 answers straight from asyncio."""
    body = b'{"ok":true}'
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, _, rest = self.buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(rest) < length:
                    return
                self.buffer = rest[length:]
                self.transport.write(answer)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def skeleton_main(port: int, next_url: str, redis_url: str, role: str) -> None:
    """One hop of the path skeleton: store in Redis and call ``next_url`` (the head), or
    call ``next_url`` and store its answer once it is sent (the worker); answer what came
    back."""
    import uuid

    import redis.asyncio as redis
    import uvicorn

    # One round trip each, as the enqueue and finish scripts are.
    script = {
        "head": "redis.call('HSET', KEYS[1], 'body', ARGV[1]) redis.call('EXPIRE', KEYS[1], 60)",
        "worker": "redis.call('HSET', KEYS[1], 'result', ARGV[1])",
    }[role]
    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/health":
            answer = b'{"status":"ok"}'
        else:
            if not state:
                state["http"] = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
                )
                # As many connections as concurrent requests, as the cluster's clients allow.
                client = redis.Redis.from_url(redis_url, max_connections=512)
                state["store"] = client.register_script(script)
            http: aiohttp.ClientSession = state["http"]
            store = state["store"]
            headers = dict(scope["headers"])
            key = headers.get(b"x-task", b"").decode() or f"skeleton:{uuid.uuid4().hex}"
            if role == "head":
                await store(keys=[key], args=[body])
            async with http.post(
                f"{next_url}{scope['path']}",
                data=body,
                headers={"content-type": "application/json", "x-task": key},
            ) as resp:
                answer = await resp.read()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})
        if role == "worker" and scope["path"] != "/health":
            await store(keys=[key], args=[answer])

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


# -- load ------------------------------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def load(url: str, body: dict[str, Any], concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients each sending the next request when the last
    is answered, for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    async with session.post(url, json=body) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(ordered, 0.5) * 1000 if ordered else None,
        "p99_ms": _percentile(ordered, 0.99) * 1000 if ordered else None,
        "errors": errors,
        "requests": len(latencies),
    }


async def stream_load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Streams back to back: tokens/s over all clients and the gaps between chunks."""
    gaps: list[float] = []
    tokens = 0
    errors = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            nonlocal tokens, errors
            while time.perf_counter() < stop:
                last = 0.0
                try:
                    async with session.post(url, json=STREAM_BODY) as resp:
                        if resp.status != 200:
                            errors += 1
                            continue
                        async for line in resp.content:
                            if not line.startswith(b"data: {"):
                                continue
                            if line.startswith(b'data: {"error"'):
                                errors += 1
                                break
                            if b'"content":"' not in line.replace(b" ", b""):
                                continue
                            now = time.perf_counter()
                            if last:
                                gaps.append(now - last)
                            last = now
                            tokens += 1
                except aiohttp.ClientError:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "tokens_per_s": tokens / elapsed,
        "itl_p50_ms": statistics.median(gaps) * 1000 if gaps else None,
        "errors": errors,
        "tokens": tokens,
    }


# -- the run ---------------------------------------------------------------------------


def start_reference(kind: str, work: Path) -> Child:
    port = free_port()
    argv = [sys.executable, __file__, f"--{kind}", str(port)]
    child = spawn(kind, argv, work / f"{kind}.log", f"http://127.0.0.1:{port}")
    if kind == "floor-app":
        wait_healthy(child, 30)
    else:
        time.sleep(1.0)
    return child


def start_direct_dummy(work: Path) -> Child:
    port = free_port()
    spec = LaunchSpec(instance_id="direct", model=MODEL, port=port)
    child = spawn(
        "dummy", get_backend("dummy").command(spec), work / "dummy.log", f"http://127.0.0.1:{port}"
    )
    wait_healthy(child, 30)
    return child


def start_skeleton(work: Path, backend_url: str, redis_url: str) -> list[Child]:
    """The path skeleton's worker (in front of ``backend_url``) and head: [head, worker]."""
    children: list[Child] = []
    next_url = backend_url
    for role in ("worker", "head"):
        port = free_port()
        argv = [sys.executable, __file__, "--skeleton", str(port), next_url, redis_url, role]
        child = spawn(
            f"skeleton-{role}", argv, work / f"skeleton-{role}.log", f"http://127.0.0.1:{port}"
        )
        children.insert(0, child)
        wait_healthy(child, 30)
        next_url = child.url
    return children


def start_cluster(work: Path, instances: int = 1, head_processes: int = 1) -> list[Child]:
    work = work / f"cluster-{head_processes}"
    redis = start_redis(free_port(), work / "redis")
    env = {"SLLM_LOG_LEVEL": "warning"}
    head = start_head(
        free_port(), redis.url, work / "head.log", {**env, "SLLM_PROCESSES": str(head_processes)}
    )
    worker = start_worker(free_port(), head.url, work, {**env, "SLLM_HEARTBEAT_INTERVAL": "1"})
    config = {
        "model": MODEL,
        "backend": "dummy",
        "auto_scaling_config": {
            "min_instances": instances,
            "max_instances": instances,
            "max_concurrency": 1024,
            "queue_per_instance_threshold": 10_000,
        },
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"{head.url}/register", json=config, timeout=10).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # Warm: the instance is up and every path has connections open.
    for _ in range(60):
        try:
            if httpx.post(f"{head.url}{PATH}", json=BODY, timeout=30).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    # The instance took the worker's warm process: not while its replacement starts.
    wait_warm_pools(head, [worker])
    return [worker, head, redis]


def run(seconds: float, levels: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        children: list[Child] = []
        try:
            raw = start_reference("raw-responder", work)
            children.append(raw)
            floor = start_reference("floor-app", work)
            children.append(floor)
            direct = start_direct_dummy(work)
            children.append(direct)
            cluster = start_cluster(work)
            children.extend(cluster)
            head, redis = cluster[1], cluster[2]
            skeleton = start_skeleton(work, direct.url, redis.url)
            children.extend(skeleton)
            targets = {
                "client ceiling (raw asyncio)": f"{raw.url}{PATH}",
                "single-hop floor (uvicorn)": f"{floor.url}{PATH}",
                "dummy backend direct": f"{direct.url}{PATH}",
                "path skeleton": f"{skeleton[0].url}{PATH}",
                "cluster": f"{head.url}{PATH}",
            }
            out: dict[str, Any] = {"seconds_per_level": seconds, "non_streaming": {}}
            for name, url in targets.items():
                out["non_streaming"][name] = {
                    str(c): asyncio.run(load(url, BODY, c, seconds)) for c in levels
                }
            out["streaming"] = {
                name: {str(c): asyncio.run(stream_load(url, c, seconds)) for c in (1, 8)}
                for name, url in (
                    ("dummy backend direct", targets["dummy backend direct"]),
                    ("cluster", targets["cluster"]),
                )
            }
            return out
        finally:
            for child in reversed(children):
                child.stop()


def report(out: dict[str, Any], levels: list[int]) -> None:
    ns = out["non_streaming"]
    print(f"non-streaming chat, {out['seconds_per_level']:g} s per level")
    print(f"{'target':<30}{'conc':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, by_level in ns.items():
        for c in levels:
            r = by_level[str(c)]
            print(
                f"{name:<30}{c:>6}{r['requests_per_s']:>10.0f}{r['p50_ms'] or 0:>9.2f}"
                f"{r['p99_ms'] or 0:>9.2f}{r['errors']:>8}"
            )
    floor, direct = ns["single-hop floor (uvicorn)"], ns["dummy backend direct"]
    for name in ("cluster", "path skeleton"):
        by_level = ns[name]
        if "64" in by_level:
            share = by_level["64"]["requests_per_s"] / floor["64"]["requests_per_s"]
            print(f"{name} / floor req/s at 64: {share:.2f} (target >= 0.25)")
        if "1" in by_level:
            added = by_level["1"]["p50_ms"] - direct["1"]["p50_ms"]
            print(f"{name}: added median latency at 1: {added:.2f} ms (target < 2)")
    print("streaming chat, 64 tokens")
    print(f"{'target':<30}{'conc':>6}{'tokens/s':>10}{'ITL p50 ms':>12}{'errors':>8}")
    for name, by_level in out["streaming"].items():
        for c, r in by_level.items():
            print(
                f"{name:<30}{c:>6}{r['tokens_per_s']:>10.0f}{r['itl_p50_ms'] or 0:>12.3f}"
                f"{r['errors']:>8}"
            )
    s = out["streaming"]
    added_itl = s["cluster"]["1"]["itl_p50_ms"] - s["dummy backend direct"]["1"]["itl_p50_ms"]
    print(f"added median inter-token latency at 1: {added_itl:.3f} ms (target < 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--floor-app", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw-responder", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skeleton", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_app:
        floor_app_main(args.floor_app)
        return
    if args.raw_responder:
        raw_responder_main(args.raw_responder)
        return
    if args.skeleton:
        port, next_url, redis_url, role = args.skeleton
        skeleton_main(int(port), next_url, redis_url, role)
        return
    out = run(args.seconds, args.concurrency)
    report(out, args.concurrency)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
