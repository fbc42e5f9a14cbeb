"""Load throughput into GPU memory: sllm's store against safetensors, torch.load and
from_pretrained, against the pinned host-to-device copy bandwidth measured in the same
run, which bounds any load from host memory.

    python benchmarks/load_gpu.py [--size-gb 1.5] [--repeat 3] [--dir DIR] [--json OUT]

Needs a CUDA GPU (it says so and exits 2 without one). The checkpoint is the one
``load.py`` writes (a Llama-shaped float32 model, as safetensors, a torch.save file and
the sllm store). Each load runs in a fresh process, as a cold start does, with CUDA
initialized before the clock, and is timed until the GPU has every byte (a device
synchronize). Right after its load, each process times a 1 GiB copy from pinned host
memory to the GPU (best of three); "x H2D" is the median over the row's processes of
the load's speed over that copy's. From the page cache (the files read first) and from
disk (evicted with posix_fadvise(DONTNEED); on a VM the host may still cache them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from load import GiB, Work, _evict, _warm, prepare, run_child

# name -> the files it reads (Work.files)
CASES: dict[str, str] = {
    "sllm read_tensors": "store",
    "model: sllm load_model": "store",
    "safetensors load_file": "safetensors",
    "torch.load(map_location)": "bin",
    "from_pretrained(device_map)": "safetensors",
}


def _loader(what: str, work: Work) -> Callable[[], Any]:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sllm.store.catalog import ensure_stored
    from sllm.store.loader import load_model, read_tensors

    store, index = ensure_stored(work.hf, work.storage, AutoModelForCausalLM)  # checks only
    if what == "sllm read_tensors":
        return lambda: read_tensors(store, index, "cuda")
    if what == "model: sllm load_model":
        return lambda: load_model(
            store, index, AutoModelForCausalLM, dtype=torch.float32, device="cuda"
        )
    if what == "safetensors load_file":
        return lambda: [load_file(f, device="cuda") for f in work.files("safetensors")]
    if what == "torch.load(map_location)":
        return lambda: torch.load(work.bin, weights_only=True, map_location="cuda")
    return lambda: AutoModelForCausalLM.from_pretrained(
        work.hf, dtype=torch.float32, device_map="cuda"
    )


def pinned_h2d(tries: int = 3) -> float:
    """GB/s of the best of ``tries`` 1 GiB copies from pinned host memory to the GPU."""
    import torch

    src = torch.ones(GiB, dtype=torch.uint8).pin_memory()
    dst = torch.empty(GiB, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(tries):
        torch.cuda.synchronize()
        started = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return GiB / best / 1e9


def child(what: str, root: Path) -> None:
    import accelerate  # noqa: F401  (imported, like the model's module, before the clock)
    import torch
    from transformers import LlamaForCausalLM  # noqa: F401  (transformers imports lazily)

    torch.zeros(1, device="cuda")  # CUDA's context: not a load
    torch.cuda.synchronize()
    load = _loader(what, Work(root))
    started = time.perf_counter()
    loaded = load()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "h2d": pinned_h2d()}))
    del loaded


def _timed(what: str, work: Work) -> tuple[float, float]:
    """Seconds of one load in a process of its own, and the GB/s of a pinned
    host-to-device copy in that process right after."""
    got = run_child(__file__, what, work)
    return float(got["seconds"]), float(got["h2d"])


def measure(work: Work, nbytes: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for cache in ("page cache", "disk"):
        for what, kind in CASES.items():
            files = work.files(kind)
            if cache == "page cache":
                _warm(files)
            runs = []
            for _ in range(repeat):
                if cache == "disk":
                    _evict(files, drop_caches=False)
                runs.append(_timed(what, work))
            best = min(seconds for seconds, _ in runs)
            row = {
                "what": what,
                "cache": cache,
                "gb_per_s": nbytes / best / 1e9,
                "h2d_beside": max(h2d for _, h2d in runs),
                "x_h2d": statistics.median(nbytes / s / 1e9 / h2d for s, h2d in runs),
            }
            rows.append(row)
            print(
                f"{what:28s} {cache:10s} {row['gb_per_s']:6.2f} GB/s  x H2D {row['x_h2d']:.2f}"
                f"  (pinned H2D beside it {row['h2d_beside']:.2f} GB/s)",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir)
        return

    import torch

    if not torch.cuda.is_available():
        print("load_gpu.py needs a CUDA GPU and a CUDA build of torch; none here", file=sys.stderr)
        raise SystemExit(2)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    work = Work(Path(tempfile.mkdtemp(prefix="sllm-load-gpu-", dir=args.dir)))
    try:
        nbytes = prepare(work, args.size_gb)
        rows = measure(work, nbytes, args.repeat)
    finally:
        shutil.rmtree(work.root, ignore_errors=True)
    print(
        f"\n{nbytes / 1e9:.2f} GB per load, each in a fresh process; GB/s: the best load; "
        "x H2D: median of each load against the pinned host-to-device copy timed in its "
        "process (the limit of a load from host memory)."
    )
    if args.json:
        args.json.write_text(json.dumps({"bytes": nbytes, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
