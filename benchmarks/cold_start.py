"""Cold start of the demo model (SmolLM2-135M-Instruct, transformers backend) from
each cache tier: time from a request for a model at zero instances to its first
token, through a real cluster on this machine (Redis, head, worker), split into the
phases the head and worker measure; against a fresh ``python -c`` that loads the same
model with plain transformers and generates one token.

    python benchmarks/cold_start.py [--repeat 5] [--json OUT] [--warm-heap-gb N]

The worker runs with its defaults but for ``--warm-heap-gb`` when one is given here.

Tiers, in the order they are measured:

* ``none``: the first request, sent right after the deploy: nothing is stored yet (the
  worker began storing the model when it was deployed: the GGUF file dequantized, the
  weights stored; the instance waits for that, then loads); once.
* ``memory``: the worker held the model's pages in memory when its instance stopped
  (scale to zero after ``keep_alive``).
* ``disk (page cache)``: a worker with no memory tier (``SLLM_MEMORY_CACHE_GB=0``,
  started for these); the stored files are in the page cache, as they are on a worker
  that loaded the model recently but holds nothing.
* ``disk (evicted)``: the same, with the stored files' pages evicted first
  (posix_fadvise DONTNEED), so the weights come from the disk (on a VM the host may
  still cache it).

Phases: ``placement`` (head: decision until the worker accepted the start),
``process_start`` (worker: spawn, or hand-over to a warm process, until the backend
began loading), ``weight_load`` (the backend's whole build: tokenizer, weights,
batching set-up and its warm-up generation, of which ``warm_up`` is shown apart), and
``first_token`` (ready until the worker saw the first output). What is left of the
client's time (the request waiting for the autoscaler, readiness polling, reports
through Redis, dispatch) is ``other``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sllm.launcher import (
    Child,
    free_port,
    start_head,
    start_redis,
    start_worker,
    wait_warm_pools,
)

MODEL = "demo"
SOURCE = "smollm2-135m"
KEEP_ALIVE = 1.0
PHASES = ("placement", "process_start", "weight_load", "first_token")


def _cold_start_sums(url: str) -> dict[str, float]:
    """sllm_cold_start_seconds_sum by phase, from a /metrics page."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "sllm_cold_start_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.labels.get("model") == MODEL:
                sums[sample.labels["phase"]] = sample.value
    return sums


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.1)


ENV = {"SLLM_LOG_LEVEL": "warning"}


class Bench:
    def __init__(self, work: Path, warm_heap_gb: float | None) -> None:
        self.work = work
        self.warm_heap_gb = warm_heap_gb
        # Made once: building an httpx client (its TLS context) took 40-75 ms here, which
        # httpx.stream() paid inside each measured request.
        self.client = httpx.Client(timeout=900)
        self.redis = start_redis(free_port(), work / "redis")
        self.head = start_head(free_port(), self.redis.url, work / "head.log", ENV)
        self.worker = self._worker(memory_tier=True)
        config = {
            "model": MODEL,
            "backend": "transformers",
            "backend_config": {"pretrained_model_name_or_path": SOURCE},
            "auto_scaling_config": {
                "min_instances": 0,
                "max_instances": 1,
                "keep_alive": KEEP_ALIVE,
            },
            "startup_timeout": 600,
        }
        _wait(lambda: bool(self.status()["workers"]), 30, "the worker's registration")
        httpx.post(f"{self.head.url}/register", json=config, timeout=30).raise_for_status()

    def _worker(self, *, memory_tier: bool) -> Child:
        env = {**ENV, "SLLM_HEARTBEAT_INTERVAL": "1"}
        if self.warm_heap_gb is not None:
            env["SLLM_WARM_HEAP_GB"] = str(self.warm_heap_gb)
        if not memory_tier:
            env["SLLM_MEMORY_CACHE_GB"] = "0"
        return start_worker(free_port(), self.head.url, self.work, env)

    def without_memory_tier(self) -> None:
        """A new worker that holds nothing in memory, in place of the first."""
        _wait(lambda: self.instances() == 0, 120, "scale to zero")
        self.worker.stop()
        self.worker = self._worker(memory_tier=False)
        wait_warm_pools(self.head, [self.worker])

    def close(self) -> None:
        self.client.close()
        for child in (self.worker, self.head, self.redis):
            child.stop()

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.head.url}/status", timeout=10).json()
        return data

    def instances(self) -> int:
        model = next(m for m in self.status()["models"] if m["model"] == MODEL)
        return len(model["instances"])

    @property
    def stored(self) -> list[Path]:
        return [p for p in (self.work / "models" / "store").glob("*") if p.is_dir()]

    def _live_worker(self) -> dict[str, Any]:
        return next(w for w in self.status()["workers"] if w["url"] == self.worker.url)

    def tier(self) -> str | None:
        cache = self._live_worker().get("cache") or []
        return next((c["tier"] for c in cache if c["source"] == SOURCE), None)

    def first_token(self) -> float:
        """Seconds from sending a streamed chat request to its first content."""
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4,
            "stream": True,
        }
        started = time.perf_counter()
        with self.client.stream("POST", f"{self.head.url}/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            lines = resp.iter_lines()
            for line in lines:
                if line.startswith("data: ") and '"content"' in line:
                    first = time.perf_counter() - started
                    break
            else:
                raise RuntimeError("the stream ended without content")
            for _ in lines:  # the rest of the stream
                pass
        return first

    def _instance_logs(self) -> set[Path]:
        return set(self.work.glob("instances-*/*.log"))

    @staticmethod
    def _warm_up(logs: set[Path]) -> float:
        """The backend's warm-up generation, from the new instance's log."""
        for log in logs:
            found = re.findall(r"warmed up in ([\d.]+) s", log.read_text())
            if found:
                return float(found[-1])
        return 0.0

    def cold(self, tier: str) -> dict[str, Any]:
        """One cold start: scaled to zero first, the tier prepared, then one request."""
        _wait(lambda: self.instances() == 0, 120, "scale to zero")
        want = None if tier == "none" else "memory" if tier == "memory" else "disk"
        _wait(lambda: self.tier() == want, 120, f"the worker to report the {want} tier")
        if tier == "disk (evicted)":
            for stored in self.stored:
                for f in stored.iterdir():
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
        # Not beside the previous start's replacement warm process importing torch.
        wait_warm_pools(self.head, [self.worker])
        before = {**_cold_start_sums(self.worker.url), **_cold_start_sums(self.head.url)}
        logs_before = self._instance_logs()
        seconds = self.first_token()
        after = {**_cold_start_sums(self.worker.url), **_cold_start_sums(self.head.url)}
        phases = {p: after.get(p, 0.0) - before.get(p, 0.0) for p in PHASES}
        phases["warm_up"] = self._warm_up(self._instance_logs() - logs_before)
        phases["other"] = seconds - sum(phases[p] for p in PHASES)
        return {"tier": tier, "seconds": seconds, "phases": phases}


def plain_transformers(path: Path) -> float:
    """A fresh interpreter loading the model with transformers and generating one
    token: wall time of the whole process."""
    code = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(path)!r})\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Say hello.'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "model.generate(**ids, max_new_tokens=1, do_sample=False)\n"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def run(repeat: int, warm_heap_gb: float | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), warm_heap_gb)
        runs: list[dict[str, Any]] = []
        try:
            runs.append(bench.cold("none"))
            runs += [bench.cold("memory") for _ in range(repeat)]
            bench.without_memory_tier()
            for tier in ("disk (page cache)", "disk (evicted)"):
                runs += [bench.cold(tier) for _ in range(repeat)]
        finally:
            bench.close()
        dequantized = next((Path(tmp) / "models" / "gguf").glob("*/config.json")).parent
        baseline = [plain_transformers(dequantized) for _ in range(repeat)]
    return {"runs": runs, "plain_transformers": baseline}


def report(out: dict[str, Any]) -> None:
    tiers = list(dict.fromkeys(r["tier"] for r in out["runs"]))
    cols = [*PHASES, "warm_up", "other"]
    print(f"{'tier':<20} {'n':>2} {'first token (s)':>16} " + " ".join(f"{c:>13}" for c in cols))
    for tier in tiers:
        runs = [r for r in out["runs"] if r["tier"] == tier]
        median = statistics.median(r["seconds"] for r in runs)
        parts = [statistics.median(r["phases"][c] for r in runs) for c in cols]
        print(
            f"{tier:<20} {len(runs):>2} {median:>16.3f} " + " ".join(f"{p:>13.3f}" for p in parts)
        )
    base = out["plain_transformers"]
    print(
        f"{'python -c (plain)':<20} {len(base):>2} {statistics.median(base):>16.3f}"
        "   (interpreter, imports, from_pretrained of the dequantized safetensors, 1 token)"
    )
    print("medians; phases as measured by the head and worker (see the module docstring)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--warm-heap-gb", type=float, help="the worker's (default: its own)")
    args = parser.parse_args()
    out = run(args.repeat, args.warm_heap_gb)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
