"""Load throughput of a ~1.5 GB checkpoint: sllm's store against safetensors,
torch.load and transformers' from_pretrained, on CPU, in one run on this machine.

    python benchmarks/load.py [--size-gb 1.5] [--repeat 2] [--dir DIR] [--json OUT]
                              [--drop-caches] [--cases "sllm read (warm arena),..."]

The checkpoint is a Llama-shaped model with random float32 weights, written once as
safetensors (save_pretrained), as a torch.save file and into the sllm store. Each
timed load runs in a fresh process, as a cold start does (so no loader reuses memory
an earlier one freed), and is timed until every byte of every tensor is resident in
that process's address space: the lazily mapped loaders get a pass touching one byte
per page, so none can look fast by leaving its reads to the first request. The pass's
own cost, what a second pass takes once nothing is left to fault in (10-17 ms for 1.5
GB on the 2-core VM: a tenth of a load into owned memory), is taken off: it is not
loading, and the memory copies loads are compared with make no such pass. Imports and
torch's one-time set-up are not timed.

From page cache: the files are read once first. From disk: before each load the files'
pages are evicted with posix_fadvise(DONTNEED), which needs no privilege and leaves the
rest of the machine's cache alone (`--drop-caches` writes /proc/sys/vm/drop_caches
instead, where it is writable); mincore confirms what was resident. On a VM the host
may still cache the disk, so "disk" is then the best case of a cold start. Each load is
timed `--repeat` times and the best counts (the machine this was written on is shared
and noisy).

The reference is this machine's memory-copy bandwidth, measured in the same run: a
1 GiB torch copy into memory already touched, and into fresh memory (the page faults
that any loader producing tensors in memory of their own pays), the latter in a fresh
process like the loads: on a VM the first touch of memory a process never used costs
more than reusing what it freed, and the comparison must not mix the two. The copy
into touched memory is also timed in each load's process right after its load, its
tensors still held, and "x memcpy" is the median over the row's processes of the load's
speed over that copy's: this machine's speed drifts by a third within minutes, so a
copy timed at another moment does not compare.

"sllm read (warm arena)" is the load a warm backend process makes with the worker's
`--warm-arena-gb`: the process faulted its arena in while it waited (before the clock,
as before the request), and the chunk files are read into it. It is the one load
whose destination is already touched, like the first memcpy's: the two compare
directly.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GiB = 1 << 30
MAPPED, OWNED, HF = "safetensors (mmap)", "safetensors (pread)", "from_pretrained"
ARENA = "sllm read (warm arena)"
FRESH_COPY = "memcpy into fresh memory"
# name -> the loader it is compared with (the one giving the same kind of tensors:
# mapped from the page cache, or in memory of their own), and the files it reads.
CASES: dict[str, tuple[str, str]] = {
    "sllm map (default)": (MAPPED, "store"),
    "sllm read (views)": (OWNED, "store"),
    ARENA: (OWNED, "store"),
    "sllm copy (pool -> per tensor)": (OWNED, "store"),
    MAPPED: (MAPPED, "safetensors"),
    OWNED: (OWNED, "safetensors"),
    "torch.load": (OWNED, "bin"),
    "torch.load(mmap=True)": (MAPPED, "bin"),
    "model: sllm load_model (map)": (HF, "store"),
    "model: sllm load_model (read)": (HF, "store"),
    HF: (HF, "safetensors"),
}


@dataclass
class Row:
    what: str
    peer: str
    cache: str  # "page cache" or "disk"
    seconds: float
    gb_per_s: float
    resident_before: float  # fraction of the files' pages in the page cache before the load
    memcpy_beside: float  # GB/s of a copy into touched memory in the loads' processes (best)
    x_memcpy: float  # median over the loads of load GB/s / the copy's in its process


@dataclass(frozen=True)
class Work:
    root: Path

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    @property
    def bin(self) -> Path:
        return self.root / "model.bin"

    @property
    def storage(self) -> Path:
        return self.root / "cache"

    def files(self, kind: str) -> list[Path]:
        if kind == "bin":
            return [self.bin]
        if kind == "safetensors":
            return sorted(self.hf.glob("*.safetensors"))
        return sorted((self.storage / "store").glob("*/chunk-*.bin"))


def _config(target_bytes: float) -> Any:
    from transformers import LlamaConfig

    hidden, inter, vocab = 1024, 2816, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden  # embeddings, untied lm_head, final norm
    layers = max(1, round((target_bytes / 4 - fixed) / per_layer))
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )


# -- one timed load, in a process of its own ---------------------------------------------


def _touch(tensors: Any) -> None:
    """Read one byte of every page of every tensor: lazily mapped ones fault in here."""
    import torch

    for t in tensors:
        flat = t.detach().reshape(-1).view(torch.uint8)
        if flat.numel():
            flat[::4096].sum()


def _loader(what: str, work: Work) -> Callable[[], Any]:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sllm.store.arena import Arena
    from sllm.store.catalog import ensure_stored
    from sllm.store.loader import ReadOptions, load_model, read_tensors

    store, index = ensure_stored(work.hf, work.storage, AutoModelForCausalLM)  # checks only
    mode: Any = "copy" if "copy" in what else "read" if "read" in what else "map"
    options = ReadOptions(cpu_mode=mode)
    if what == ARENA:
        sizes = [c.size for c in index.chunks]
        held = Arena(sum(sizes) + len(sizes) * mmap.PAGESIZE)  # faulted in: not timed
        return lambda: read_tensors(store, index, "cpu", options, into=held.claim(sizes)).values()
    if what.startswith("sllm"):
        return lambda: read_tensors(store, index, "cpu", options).values()
    if what.startswith("model: sllm"):
        return lambda: (
            load_model(store, index, AutoModelForCausalLM, dtype=torch.float32, options=options)
            .state_dict()
            .values()
        )
    if what.startswith("safetensors"):
        backend = "pread" if what == OWNED else "mmap"
        files = work.files("safetensors")
        return lambda: [t for f in files for t in load_file(f, backend=backend).values()]
    if what.startswith("torch.load"):
        mapped = "mmap" in what
        return lambda: torch.load(work.bin, weights_only=True, mmap=mapped).values()
    return lambda: (
        AutoModelForCausalLM.from_pretrained(work.hf, dtype=torch.float32).state_dict().values()
    )


def copy_touched(tries: int = 3) -> float:
    """GB/s of the best of ``tries`` 1 GiB copies into memory already touched."""
    import torch

    src = torch.ones(GiB, dtype=torch.uint8)
    dst = torch.zeros(GiB, dtype=torch.uint8)
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return GiB / best / 1e9


def child(what: str, root: Path) -> None:
    import accelerate  # noqa: F401  (imported, like the model's module, before the clock)
    import torch
    from transformers import LlamaForCausalLM  # noqa: F401  (transformers imports lazily)

    _touch([torch.zeros(1 << 16)])  # torch's first op pays one-time set-up: not a load
    if what == FRESH_COPY:
        src = torch.ones(GiB, dtype=torch.uint8)
        gc.collect()
        started = time.perf_counter()
        _touch([src.clone()])
        print(json.dumps({"seconds": time.perf_counter() - started}))
        return
    load = _loader(what, Work(root))
    gc.collect()
    started = time.perf_counter()
    loaded = list(load())
    _touch(loaded)
    seconds = time.perf_counter() - started
    again = time.perf_counter()
    _touch(loaded)
    seconds -= time.perf_counter() - again
    print(json.dumps({"seconds": seconds, "memcpy": copy_touched()}))
    del loaded


# -- the run ------------------------------------------------------------------------------


def _resident(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache (mincore over a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if not size:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(addr, size, vec) == 0:
                resident += sum(b & 1 for b in vec.raw)
                total += pages
            libc.munmap(addr, size)
        finally:
            os.close(fd)
    return resident / total if total else 0.0


def _evict(paths: list[Path], drop_caches: bool) -> None:
    if drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def memcpy_bandwidth(work: Work, repeat: int) -> dict[str, float]:
    """A 1 GiB copy into memory already touched (in this process, no page faults), and
    into fresh memory in a fresh process, as each load runs: a VM backs a fresh
    process's first touches more slowly than memory this process has used before."""
    best_fresh = min(_timed(FRESH_COPY, work)[0] for _ in range(repeat))
    return {"touched": copy_touched(), "fresh": GiB / best_fresh / 1e9}


def prepare(work: Work, size_gb: float) -> int:
    """Write the checkpoint three ways; the bytes of one load."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from sllm.store.catalog import ensure_stored

    started = time.perf_counter()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(size_gb * 1e9)).eval()
    model.save_pretrained(work.hf)
    torch.save(model.state_dict(), work.bin)
    del model
    gc.collect()
    built = time.perf_counter() - started
    started = time.perf_counter()
    _, index = ensure_stored(work.hf, work.storage, AutoModelForCausalLM)
    stored = time.perf_counter() - started
    print(
        f"checkpoint: {index.nbytes / 1e9:.2f} GB float32, {len(index.tensors)} tensors, "
        f"{len(index.chunks)} chunk file(s); built in {built:.0f} s; sllm store save took "
        f"{stored:.1f} s (from_pretrained, write, fsync, verify every checksum)"
    )
    return index.nbytes


def run_child(script: str, what: str, work: Work) -> dict[str, Any]:
    """What ``script --child what`` printed last (a JSON line): one load, in a process of
    its own."""
    out = subprocess.run(
        [sys.executable, script, "--child", what, "--dir", str(work.root)],
        capture_output=True,
        text=True,
        check=True,
    )
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def _timed(what: str, work: Work) -> tuple[float, float]:
    """Seconds of one load in a process of its own, and the GB/s of a copy into touched
    memory in that process right after."""
    got = run_child(__file__, what, work)
    return float(got["seconds"]), float(got.get("memcpy", 0.0))


def measure(work: Work, nbytes: int, repeat: int, drop_caches: bool, cases: list[str]) -> list[Row]:
    rows = []
    for cache in ("page cache", "disk"):
        for what in cases:
            peer, kind = CASES[what]
            files = work.files(kind)
            best, resident, memcpy, ratios = float("inf"), 0.0, 0.0, []
            if cache == "page cache":
                _warm(files)
            for _ in range(repeat):
                if cache == "disk":
                    _evict(files, drop_caches)
                resident = _resident(files)
                seconds, beside = _timed(what, work)
                best, memcpy = min(best, seconds), max(memcpy, beside)
                ratios.append(nbytes / seconds / 1e9 / beside)
            ratio = statistics.median(ratios)
            rows.append(Row(what, peer, cache, best, nbytes / best / 1e9, resident, memcpy, ratio))
            print(
                f"  {cache:10s} {what:32s} {nbytes / best / 1e9:6.2f} GB/s, "
                f"x memcpy beside it {' '.join(f'{r:.2f}' for r in ratios)}",
                flush=True,
            )
    return rows


def report(rows: list[Row], bandwidth: dict[str, float], nbytes: int) -> None:
    print(
        f"\nmemory copy, 1 GiB torch copy_: {bandwidth['touched']:.2f} GB/s into touched "
        f"memory, {bandwidth['fresh']:.2f} GB/s into fresh memory (clone, in a fresh process); "
        f"into touched memory in the loads' processes: "
        f"{min(r.memcpy_beside for r in rows):.2f} to {max(r.memcpy_beside for r in rows):.2f}"
    )
    speed = {(r.what, r.cache): r.gb_per_s for r in rows}
    speed.update({(r.peer, r.cache): float("nan") for r in rows if (r.peer, r.cache) not in speed})
    print(
        f"\n{'load, until every byte is resident':32s} {'from':10s} {'GB/s':>6s} "
        f"{'x memcpy':>8s} {'x fresh':>7s} {'x peer':>6s}  {'peer':20s} {'cached':>6s}"
    )
    for r in rows:
        print(
            f"{r.what:32s} {r.cache:10s} {r.gb_per_s:6.2f} "
            f"{r.x_memcpy:8.2f} {r.gb_per_s / bandwidth['fresh']:7.2f} "
            f"{r.gb_per_s / speed[r.peer, r.cache]:6.2f}  {r.peer:20s} {r.resident_before:6.0%}"
        )
    print(
        f"\n{nbytes / 1e9:.2f} GB per load, each in a fresh process; GB/s: the best load. "
        "x memcpy: median of each load against the copy into touched memory timed in its "
        "process; x fresh: against the copy "
        "into fresh memory; x peer: against the loader that "
        "gives the same kind of tensors; cached: the files' pages in the page cache before "
        "the load."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument(
        "--cases",
        default=None,
        help=f"comma-separated loads to time (default: all): {', '.join(CASES)}",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir)
        return

    import torch

    cases = [c.strip() for c in args.cases.split(",")] if args.cases else list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    can_drop = os.access("/proc/sys/vm/drop_caches", os.W_OK)
    if args.drop_caches and not can_drop:
        parser.error("/proc/sys/vm/drop_caches is not writable here")
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"/proc/sys/vm/drop_caches writable: {can_drop}; evicting with ", end="")
    print("drop_caches" if args.drop_caches else "posix_fadvise(DONTNEED) per file")
    work = Work(Path(tempfile.mkdtemp(prefix="sllm-load-", dir=args.dir)))
    try:
        nbytes = prepare(work, args.size_gb)
        rows = measure(work, nbytes, args.repeat, args.drop_caches, cases)
        bandwidth = memcpy_bandwidth(work, args.repeat)
    finally:
        shutil.rmtree(work.root, ignore_errors=True)
    report(rows, bandwidth, nbytes)
    if args.json:
        body = {"bytes": nbytes, "memcpy_gb_per_s": bandwidth, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(body, indent=1))


if __name__ == "__main__":
    main()
