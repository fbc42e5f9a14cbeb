"""Live migration against a plain resume: the gap a streaming client sees when its
request moves to another instance on purpose (``POST /instances/{id}/migrate``) and
when its instance is killed (the gateway resumes it elsewhere), and what a migration
costs the destination's other streams.

A real cluster on this machine (Redis, a head, one worker running two instances of the
demo model, SmolLM2-135M-Instruct, on the transformers backend; ``--backend dummy``:
the dummy with a prefill cost per word and its prefix cache, where the destination
warms up first). Each run: a long greedy stream on one instance and another stream on
the other (the destination), both under way; then the first is moved (or its backend
process SIGKILLed), runs interleaved. Printed per kind: the largest gap between two
chunks of the moved stream (median and p99 over runs) against its median gap between
chunks, the warm-up rounds, whether its text equals an unmoved run's, and the
destination stream's tokens/s in the second after the ask against the second before.

    python benchmarks/migration.py [--backend transformers|dummy] [--runs 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from sllm.client.launcher import Child, free_port, start_head, start_redis, start_worker

MODEL = "demo"
ENV = {"SLLM_LOG_LEVEL": "warning"}
CONFIGS: dict[str, dict[str, Any]] = {
    "transformers": {"pretrained_model_name_or_path": "smollm2-135m"},
    # 2 ms a prompt word not prefilled before, 30 words a second: a warm-up pays.
    "dummy": {"tokens_per_second": 30.0, "prefill_per_word": 0.002},
}
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
TOKENS = 160
CUT_AT = 40  # chunks into the stream when it is moved or killed


class Stream(threading.Thread):
    """One streamed chat request, each chunk's text, instance and arrival time."""

    def __init__(self, head: str, tokens: int = TOKENS, content: str = "") -> None:
        super().__init__(daemon=True)
        self.head = head
        self.body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}] if content else MESSAGES,
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            # A stream as long as asked: an early end would leave nothing to move.
            "ignore_eos": True,
        }
        self.chunks: list[tuple[float, str, str]] = []
        self.error: str | None = None

    def run(self) -> None:
        with httpx.stream(
            "POST", f"{self.head}/v1/chat/completions", json=self.body, timeout=300
        ) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    self.error = str(event["error"])
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        self.chunks.append(
                            (time.monotonic(), text, str(event.get("system_fingerprint")))
                        )

    def text(self) -> str:
        return "".join(t for _, t, _ in self.chunks)

    def gaps(self) -> list[float]:
        times = [t for t, _, _ in self.chunks]
        return [b - a for a, b in itertools.pairwise(times)]

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t, _, _ in self.chunks if start <= t < end) / (end - start)

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.chunks) < count:
            if time.monotonic() > deadline or not self.is_alive():
                raise RuntimeError(f"the stream stopped at {len(self.chunks)} chunks")
            time.sleep(0.005)


def ready(head: str, count: int) -> list[str]:
    """The model's instances once ``count`` are ready and idle."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        model = next(m for m in httpx.get(f"{head}/status", timeout=10).json()["models"])
        instances = model["instances"]
        if len(instances) == count and all(
            i["state"] == "ready" and not i["outstanding"] for i in instances
        ):
            return [i["instance_id"] for i in instances]
        time.sleep(0.2)
    raise RuntimeError("the instances never became ready")


def kill_backend(instance_id: str) -> None:
    """SIGKILL the instance's backend process: the one writing its log (a process
    from the warm pool names no instance on its command line)."""
    for proc in psutil.process_iter():
        try:
            if any(instance_id in f.path for f in proc.open_files()):
                proc.send_signal(signal.SIGKILL)
                return
        except psutil.Error:
            continue
    raise RuntimeError(f"no backend process of {instance_id}")


def one_run(head: str, kind: str, reference: str) -> dict[str, Any]:
    ready(head, 2)
    moved = Stream(head)
    moved.start()
    moved.wait_for(CUT_AT // 2)
    source = moved.chunks[-1][2]
    # The other stream lands on the other instance (the least loaded): the destination.
    other = Stream(head, 200, "Describe the sea in great detail.")
    other.start()
    other.wait_for(5)
    destination = other.chunks[-1][2]
    assert destination != source, "both streams on one instance"
    moved.wait_for(CUT_AT)
    asked = time.monotonic()
    if kind == "migration":
        resp = httpx.post(f"{head}/instances/{source}/migrate", timeout=10)
        resp.raise_for_status()
    else:
        kill_backend(source)
    moved.join(300)
    other_rate_after = other.rate(asked, asked + 1.0)
    other_rate_before = other.rate(asked - 1.0, asked)
    other.join(300)
    gaps = moved.gaps()
    instances = list(dict.fromkeys(fp for _, _, fp in moved.chunks))
    return {
        "max_gap": max(gaps),
        "median_gap": statistics.median(gaps),
        "same_text": moved.text() == reference,
        "moved": len(instances) == 2 and instances[1] == destination,
        "other_before": other_rate_before,
        "other_after": other_rate_after,
        "error": moved.error,
    }


def rounds(head: str) -> float:
    text = httpx.get(f"{head}/metrics", timeout=10).text
    total = moved = 0.0
    for line in text.splitlines():
        if line.startswith("sllm_migration_rounds_total{"):
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith("sllm_migrations_total{") and 'outcome="moved"' in line:
            moved += float(line.rsplit(" ", 1)[1])
    return total / moved if moved else 0.0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=sorted(CONFIGS), default="transformers")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    procs: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="sllm-migration-") as tmp:
        work = Path(tmp)
        try:
            redis = start_redis(free_port(), work / "redis")
            procs.append(redis)
            head = start_head(free_port(), redis.url, work / "head.log", ENV)
            procs.append(head)
            procs.append(start_worker(free_port(), head.url, work, ENV))
            config = {
                "model": MODEL,
                "backend": args.backend,
                "backend_config": CONFIGS[args.backend],
                "auto_scaling_config": {"min_instances": 2, "max_instances": 2},
            }
            httpx.post(f"{head.url}/register", json=config, timeout=30).raise_for_status()
            ready(head.url, 2)
            reference = Stream(head.url)
            reference.run()
            results: dict[str, list[dict[str, Any]]] = {"migration": [], "resume after kill": []}
            for _ in range(args.runs):
                for kind in results:  # interleaved
                    results[kind].append(one_run(head.url, kind, reference.text()))
            print(
                f"backend {args.backend}, {args.runs} runs each, cut after {CUT_AT} of "
                f"{TOKENS} tokens; warm-up rounds per migration: {rounds(head.url):.2f}"
            )
            print(
                f"{'':<20}{'max gap p50 (s)':>16}{'p99':>8}{'chunk gap p50':>15}"
                f"{'same text':>11}{'moved':>7}{'dest. tok/s before':>20}{'after':>7}"
            )
            for kind, runs in results.items():
                print(
                    f"{kind:<20}"
                    f"{statistics.median(r['max_gap'] for r in runs):>16.3f}"
                    f"{p99([r['max_gap'] for r in runs]):>8.3f}"
                    f"{statistics.median(r['median_gap'] for r in runs):>15.4f}"
                    f"{sum(r['same_text'] for r in runs):>8}/{len(runs)}"
                    f"{sum(r['moved'] for r in runs):>5}/{len(runs)}"
                    f"{statistics.median(r['other_before'] for r in runs):>20.1f}"
                    f"{statistics.median(r['other_after'] for r in runs):>7.1f}"
                )
                errors = [r["error"] for r in runs if r["error"]]
                if errors:
                    print(f"  errors: {errors}")
        finally:
            for proc in reversed(procs):
                proc.stop()


if __name__ == "__main__":
    main()
