"""Time from `sllm up` to the demo model's first answer, split into its parts.

    python benchmarks/up_time.py [--runs 3]

Each run starts `sllm up` on free ports with a fresh data directory, reads the timings
it prints ("Ready in T s (redis a s, head b s, worker c s, model d s)"), then stops it
with SIGINT. Prints the median of each part over the runs.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from sllm.client.launcher import free_port

READY = re.compile(r"Ready in ([\d.]+) s \((.*)\)\.")
PART = re.compile(r"(\w+) ([\d.]+) s")


def one_run(timeout: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        argv = [sys.executable, "-m", "sllm", "up", "--port", str(free_port()), "--data-dir", data]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                match = READY.search(line)
                if match:
                    wall = time.monotonic() - started
                    parts = {k: float(v) for k, v in PART.findall(match.group(2))}
                    return {"wall (incl. Python start-up)": wall, **parts}
                if time.monotonic() - started > timeout:
                    break
            raise RuntimeError(f"sllm up never became ready (exit {proc.poll()})")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    runs = [one_run(args.timeout) for _ in range(args.runs)]
    print(f"{'part':<30}{'median s':>10}   runs")
    for key in runs[0]:
        values = [r[key] for r in runs]
        shown = " ".join(f"{v:.2f}" for v in values)
        print(f"{key:<30}{statistics.median(values):>10.2f}   {shown}")


if __name__ == "__main__":
    main()
