"""Which CPU cores an instance binds its threads to: a pure choice over the cores the
instances running on this worker hold, so that two instances started one after another
do not both bind core 0 (vLLM's CPU build binds one OpenMP thread per core it is given)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def default_threads(cpu_count: int) -> int:
    """Cores one instance gets when its config names none: half of those left after the
    one vLLM keeps for its API server (and the worker), at least one."""
    return max(1, (cpu_count - 1) // 2)


def choose_cores(cpu_count: int, held: Iterable[tuple[int, ...]], want: int) -> tuple[int, ...]:
    """``want`` cores (at most all of them), those fewest running instances hold first and
    the lowest numbered among equals: disjoint from the others' while enough are free."""
    use = Counter(core for cores in held for core in cores)
    order = sorted(range(cpu_count), key=lambda core: (use[core], core))
    return tuple(sorted(order[: max(1, min(want, cpu_count))]))


def bind_list(cores: tuple[int, ...]) -> str:
    """``cores`` as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` reads them: ``0,2,3``."""
    return ",".join(map(str, cores))
