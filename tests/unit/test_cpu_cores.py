"""Which cores a CPU instance binds its threads to."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from sllm.worker.cpu_cores import bind_list, choose_cores, default_threads


def test_instances_started_one_after_another_bind_disjoint_cores() -> None:
    first = choose_cores(8, [], 3)
    second = choose_cores(8, [first], 3)
    assert first == (0, 1, 2) and second == (3, 4, 5)
    # Past what is free, the least shared cores are shared.
    third = choose_cores(8, [first, second], 3)
    assert third == (0, 6, 7)


def test_on_two_cores_two_instances_take_one_each() -> None:
    assert default_threads(2) == 1
    first = choose_cores(2, [], default_threads(2))
    assert first == (0,) and choose_cores(2, [first], 1) == (1,)


def test_wants_are_bounded_by_the_machine() -> None:
    assert choose_cores(2, [], 5) == (0, 1)
    assert choose_cores(4, [], 0) == (0,)
    assert default_threads(1) == 1 and default_threads(16) == 7
    assert bind_list((0, 2, 3)) == "0,2,3"


def test_transformers_cpu_instances_bind_a_share_of_the_cores() -> None:
    from pathlib import Path

    from sllm.backends.base import LaunchSpec
    from sllm.backends.registry import get_backend

    backend = get_backend("transformers")

    def spec(num_gpus: int = 0, **knobs: object) -> LaunchSpec:
        config = {"pretrained_model_name_or_path": "/m", **knobs}
        return LaunchSpec("i", "m", 1, config, num_gpus, {}, Path("/s"))

    assert backend.cpu_threads(spec(), 2) == 1 and backend.cpu_threads(spec(), 16) == 7
    assert backend.cpu_threads(spec(cpu_threads=2), 2) == 2
    assert backend.cpu_threads(spec(num_gpus=1), 16) == 0
    assert backend.cpu_threads(spec(device="cuda"), 16) == 0
    assert backend.cpu_threads(spec(unknown=1), 16) == 0  # the instance says what is wrong
    bound = dataclasses.replace(spec(), cpu_cores=(1, 3))
    assert backend.env(bound) == {"SLLM_CPU_CORES": "1,3"} and backend.env(spec()) == {}


def test_a_process_whose_torch_threads_run_already_is_bound_whole() -> None:
    """As a warm process: torch's thread pool started before the cores were known."""
    script = (
        "import os, torch\n"
        "from pathlib import Path\n"
        "torch.ones(512, 512) @ torch.ones(512, 512)\n"
        "from sllm.backends.cpu_binding import bind_torch, cores_from_env\n"
        "bind_torch(cores_from_env())\n"
        "tasks = Path('/proc/self/task').iterdir()\n"
        "cores = {frozenset(os.sched_getaffinity(int(t.name))) for t in tasks}\n"
        "print(torch.get_num_threads(), sorted(map(sorted, cores)))\n"
    )
    env = {**os.environ, "SLLM_CPU_CORES": "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "[[0]]"], out.stdout
