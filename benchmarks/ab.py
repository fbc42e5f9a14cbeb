"""Two versions of sllm side by side: what one request (or streamed token) costs the head,
the worker and Redis in each, told apart on a machine whose speed drifts.

    python benchmarks/ab.py REV_A [REV_B] [--pairs 10] [--seconds 2]
                            [--concurrency 8] [--stream]

REV_A and REV_B are git revisions of this checkout (REV_B: the working tree when left
out), exported side by side. Both clusters (Redis, head, worker, a dummy instance at
zero delay) are up at once and take turns, a short closed-loop run each, the order
flipped every pair, so both see the same hour of the machine. Printed per figure: each
version's median and the median of the pairs' ratios B / A with their range; a ratio
whose range straddles 1 is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil
from serving import BODY, PATH, load, start_cluster, stream_load

from sllm.client.launcher import Child

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str | None, into: Path) -> Path:
    """The source of ``rev`` (None: the working tree, as it is) as a folder to import
    sllm from."""
    if rev is None:
        return ROOT
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def cpu_seconds(children: dict[str, Child]) -> dict[str, float]:
    out = {}
    for name, child in children.items():
        times = psutil.Process(child.popen.pid).cpu_times()
        out[name] = times.user + times.system
    return out


def one_run(children: dict[str, Child], args: argparse.Namespace) -> dict[str, float]:
    url = f"{children['head'].url}{PATH}"
    before = cpu_seconds(children)
    if args.stream:
        result = asyncio.run(stream_load(url, args.concurrency, args.seconds))
        count = result["tokens"]
    else:
        result = asyncio.run(load(url, BODY, args.concurrency, args.seconds))
        count = result["requests"]
    after = cpu_seconds(children)
    row = {"rate": count / args.seconds}
    if not args.stream:
        row["p50 ms"] = result["p50_ms"]
    for name in children:
        row[f"{name} ms"] = (after[name] - before[name]) / max(count, 1) * 1000
    row["routing ms"] = sum(row[f"{name} ms"] for name in children)
    return row


def report(rows: dict[str, list[dict[str, float]]], unit: str) -> None:
    a, b = rows
    print(f"| per {unit} | A median | B median | B / A, paired median | range |")
    print("| --- | --- | --- | --- | --- |")
    for key in rows[a][0]:
        ratios = [y[key] / x[key] for x, y in zip(rows[a], rows[b], strict=True) if x[key]]
        med_a = statistics.median(r[key] for r in rows[a])
        med_b = statistics.median(r[key] for r in rows[b])
        print(f"| {key} | {med_a:,.3f} | {med_b:,.3f} | {statistics.median(ratios):.3f} "
              f"| {min(ratios):.2f} - {max(ratios):.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev_a")
    parser.add_argument("rev_b", nargs="?", help="default: the working tree")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stream", action="store_true", help="streams of 64 tokens")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sllm-ab-") as tmp:
        work = Path(tmp)
        clusters: dict[str, dict[str, Child]] = {}
        try:
            for label, rev in (("A", args.rev_a), ("B", args.rev_b)):
                source = export(rev, work / f"src-{label}")
                # Every process of this cluster imports sllm from that version.
                os.environ["PYTHONPATH"] = str(source)
                worker, head, redis = start_cluster(work / f"run-{label}")
                clusters[label] = {"head": head, "worker": worker, "redis": redis}
            rows: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
            for pair in range(args.pairs):
                for label in ("A", "B") if pair % 2 == 0 else ("B", "A"):
                    rows[label].append(one_run(clusters[label], args))
        finally:
            for children in clusters.values():
                for child in children.values():
                    child.stop()
    versions = f"A = {args.rev_a}, B = {args.rev_b or 'working tree'}"
    runs = f"{args.pairs} pairs of {args.seconds:g} s at concurrency {args.concurrency}"
    print(f"{versions}; {runs}, {os.cpu_count()} cores")
    report(rows, "token" if args.stream else "request")


if __name__ == "__main__":
    sys.exit(main())
