"""hardware.snapshot(): its shape, and GPUs read through (a stand-in for) pynvml."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from sllm.worker import hardware


@pytest.fixture(autouse=True)
def fresh_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test decides what pynvml looks like; the module caches its first init.
    monkeypatch.setattr(hardware, "_nvml", None)


class FakeNvml(ModuleType):
    def __init__(self, gpus: int, fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.fail_init = fail_init
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"Fake GPU" if handle == 0 else "Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 << 30, free=60 << 30, used=20 << 30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=42, memory=10)


def test_snapshot_keys_and_types() -> None:
    snap = hardware.snapshot()
    assert set(snap) == {"cpu_count", "cpu_percent", "memory_total", "memory_available", "gpus"}
    assert isinstance(snap["cpu_count"], int) and snap["cpu_count"] >= 1
    assert isinstance(snap["cpu_percent"], float)
    assert isinstance(snap["memory_total"], int) and snap["memory_total"] > 0
    assert isinstance(snap["memory_available"], int)
    assert 0 < snap["memory_available"] <= snap["memory_total"]
    assert isinstance(snap["gpus"], list)


def test_no_pynvml_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import pynvml` raise ImportError.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert hardware.snapshot()["gpus"] == []
    assert hardware.gpu_count() == 0


def test_no_driver_means_no_gpus_and_no_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(gpus=2, fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert hardware.snapshot()["gpus"] == []
    assert hardware.gpu_count() == 0
    assert fake.inits == 1


def test_gpus_read_through_nvml_initialised_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(gpus=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = hardware.snapshot()["gpus"]
    assert gpus == [
        {
            "index": i,
            "name": "Fake GPU",
            "memory_total": 80 << 30,
            "memory_free": 60 << 30,
            "memory_used": 20 << 30,
            "utilization": 42,
        }
        for i in range(2)
    ]
    assert hardware.gpu_count() == 2
    hardware.snapshot()
    assert fake.inits == 1


def test_failing_gpu_query_gives_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(gpus=1)

    def broken(handle: int) -> SimpleNamespace:
        raise RuntimeError("GPU is lost")

    fake.nvmlDeviceGetMemoryInfo = broken  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert hardware.snapshot()["gpus"] == []
