"""What this machine has: CPUs, memory and GPUs, for the worker's heartbeat."""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from sllm.worker.gpu_assignment import GpuMemory

log = logging.getLogger(__name__)

# NVML is initialised once per process: nvmlInit costs tens of milliseconds and the
# heartbeat asks every few seconds. None means "not tried yet", False "not usable here".
_nvml: ModuleType | bool | None = None
_nvml_lock = threading.Lock()


def _nvml_module() -> ModuleType | None:
    """pynvml, initialised, or None when there is no library or no driver."""
    global _nvml
    with _nvml_lock:
        if _nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml = pynvml
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, ...
                log.info("no NVIDIA GPUs visible (%s)", exc)
                _nvml = False
        return _nvml if isinstance(_nvml, ModuleType) else None


def _gpus() -> list[dict[str, Any]]:
    nvml = _nvml_module()
    if nvml is None:
        return []
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    # Older pynvml releases return bytes.
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_total": int(memory.total),
                    "memory_free": int(memory.free),
                    "memory_used": int(memory.used),
                    "utilization": int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                }
            )
        return gpus
    except Exception as exc:
        # A GPU that fell off the bus must not stop the heartbeat.
        log.warning("reading GPUs failed: %s", exc)
        return []


def owned_memory(root: int) -> dict[str, int]:
    """Memory sllm itself holds on this machine: the resident set of process ``root``
    (the worker) and all its children (instances, warm processes, their engines), and
    the GPU memory NVML counts for them. Blocking: call it in a thread."""
    # ``root`` is the calling worker itself: it exists; a child that ends meanwhile is
    # skipped below.
    top = psutil.Process(root)
    procs = {proc.pid: proc for proc in [top, *top.children(recursive=True)]}
    host = 0
    for proc in procs.values():
        try:
            host += proc.memory_info().rss
        except psutil.Error:
            continue
    return {"host": host, "gpu": _gpu_memory_of(set(procs))}


def _gpu_memory_of(pids: set[int]) -> int:
    nvml = _nvml_module()
    if nvml is None or not pids:
        return 0
    used = 0
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory)
    except Exception as exc:  # a GPU that fell off the bus must not stop the heartbeat
        log.warning("reading GPU processes failed: %s", exc)
    return used


def snapshot() -> dict[str, Any]:
    """CPU, memory (bytes) and GPU figures; never raises for a missing GPU stack.

    Calls into NVML, so async callers should run it in a thread.
    """
    memory = psutil.virtual_memory()
    return {
        "cpu_count": psutil.cpu_count() or 1,
        # interval=None compares with the previous call instead of sleeping.
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_total": int(memory.total),
        "memory_available": int(memory.available),
        "gpus": _gpus(),
    }


# CPU flags of native bfloat16 arithmetic: x86's AVX-512 BF16 and AMX, Arm's BF16.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (Linux's /proc/cpuinfo flags);
    without it, bfloat16 is emulated and slower than float32."""
    try:
        return bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def bf16_in_cpuinfo(text: str) -> bool:
    """Whether /proc/cpuinfo's ``text`` lists a bfloat16 flag (x86 ``flags``, Arm
    ``Features``)."""
    return any(
        _BF16_FLAGS & set(line.partition(":")[2].split())
        for line in text.splitlines()
        if line.startswith(("flags", "Features"))
    )


def gpu_count() -> int:
    """Number of NVIDIA GPUs NVML sees (0 without a driver)."""
    nvml = _nvml_module()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        log.warning("counting GPUs failed: %s", exc)
        return 0


def gpu_memory() -> list[GpuMemory]:
    """Free memory of each GPU, as NVML reads it now (none without a driver).

    Calls into NVML, so async callers should run it in a thread.
    """
    return [GpuMemory(index=g["index"], free=g["memory_free"]) for g in _gpus()]
