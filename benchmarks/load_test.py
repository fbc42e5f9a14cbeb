"""A sustained load test: the cluster with the dummy backend at 64 concurrent clients for
60 s (half of them streaming), which must end with zero errors.

    python benchmarks/load_test.py [--concurrency 64] [--seconds 60] [--instances 2]

Prints requests/s, latency percentiles, streamed tokens/s and the error count; exits 1
on any error. Runs in one process beside the cluster it starts, like serving.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from serving import BODY, PATH, load, start_cluster, stream_load


async def mixed(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    streaming = concurrency // 2
    plain, streamed = await asyncio.gather(
        load(url, BODY, concurrency - streaming, seconds),
        stream_load(url, streaming, seconds),
    )
    return {"non_streaming": plain, "streaming": streamed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        children = start_cluster(Path(tmp), instances=args.instances)
        try:
            head = children[1]
            out = asyncio.run(mixed(f"{head.url}{PATH}", args.concurrency, args.seconds))
        finally:
            for child in children:
                child.stop()
    plain, streamed = out["non_streaming"], out["streaming"]
    errors = plain["errors"] + streamed["errors"]
    print(f"{args.concurrency} clients for {args.seconds:g} s, {args.instances} instance(s)")
    print(
        f"non-streaming: {plain['requests']} requests, {plain['requests_per_s']:.0f} req/s, "
        f"p50 {plain['p50_ms']:.1f} ms, p99 {plain['p99_ms']:.1f} ms, errors {plain['errors']}"
    )
    print(
        f"streaming: {streamed['tokens_per_s']:.0f} tokens/s, ITL p50 "
        f"{streamed['itl_p50_ms']:.3f} ms, errors {streamed['errors']}"
    )
    print(f"errors: {errors}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
