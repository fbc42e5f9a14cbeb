"""A worker with a warm process: the first instance is that process (no interpreter
started for it), the pool refills, and a SIGKILLed worker takes its warm processes
with it as it takes its instances; with an arena, the model's weights are read into
the memory the warm process faulted in."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.faults.state import children, dead
from tests.tiny_models import build_tiny_causal_lm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def warm_pids(worker_pid: int) -> list[int]:
    found = []
    for pid in children(worker_pid):
        try:
            if "sllm.backends.warm" in psutil.Process(pid).cmdline():
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_an_instance_starts_from_the_warm_process_and_dies_with_the_worker(
    cluster: Cluster,
) -> None:
    cluster.start_head()
    worker = cluster.start_worker(SLLM_WARM_PROCESSES="1")
    # It says ready once torch and transformers are imported.
    wait_until(lambda: "warm_processes" in str(cluster.status()), 5, "the status")
    [warm] = wait_until(lambda: warm_pids(worker.popen.pid), 60, "a warm process")
    wait_until(
        lambda: any(w.get("warm_processes") == 1 for w in cluster.status()["workers"]),
        90,
        "the warm process to be ready",
    )
    cluster.deploy("m")
    reply = cluster.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello there"}], max_tokens=8
    )
    assert reply.choices[0].message.content
    started = re.findall(r"starting \S+ from warm process (\d+)", worker.log_tail(400))
    assert started == [str(warm)], worker.log_tail(100)
    # The pool starts another; the instance is the old warm process.
    [fresh] = wait_until(
        lambda: [p for p in warm_pids(worker.popen.pid) if p != warm] or None, 60, "a refill"
    )
    everything = children(worker.popen.pid)
    assert warm in everything and fresh in everything
    worker.popen.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    worker.popen.wait(5)
    wait_until(lambda: all(dead(p) for p in everything), 5, "the worker's processes to die")
    print(f"instance and warm process gone {time.monotonic() - killed:.2f}s after the kill")


def test_a_warm_process_with_an_arena_loads_the_model_into_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    source = str(build_tiny_causal_lm(tmp_path / "tiny"))
    cluster.start_head()
    worker = cluster.start_worker(SLLM_WARM_PROCESSES="1", SLLM_WARM_ARENA_GB="0.05")
    wait_until(
        lambda: any(w.get("warm_processes") == 1 for w in cluster.status()["workers"]),
        90,
        "the warm process to be ready",
    )
    cluster.deploy(
        "tiny", backend="transformers", backend_config={"pretrained_model_name_or_path": source}
    )
    reply = cluster.client().completions.create(model="tiny", prompt="hello", max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert re.search(r"starting \S+ from warm process", worker.log_tail(400))
    [log] = (cluster.workdir / f"instances-{worker.url.rsplit(':', 1)[1]}").glob("tiny-*.log")
    assert "to cpu (the warm process's memory)" in log.read_text()
