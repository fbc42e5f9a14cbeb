"""Warm backend processes: the entry point becomes the instance it is told to, the
pool keeps itself filled and reaps what dies, and an instance started through the
instance manager is a process that was already running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest

from sllm.backends import warm_heap
from sllm.backends.registry import get_backend, warm_primes
from sllm.client.procs import backend_environment, kill_and_reap
from sllm.worker import warm_demand
from sllm.worker.instance_manager import InstanceManager
from sllm.worker.warm_pool import BACKOFF, SETTLE, WarmPool
from tests.integration.test_instance_manager import Recorder

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
# What the dummy backend primes: no torch, so these tests stay quick.
DUMMY_PRIMES = list(get_backend("dummy").warm_prime)


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def warm_children() -> list[int]:
    return [
        p.pid for p in psutil.Process().children() if "sllm.backends.warm" in " ".join(p.cmdline())
    ]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def warm_entry(*primes: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sllm.backends.warm", *primes],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_warm_process_runs_the_module_it_is_given(tmp_path: Path) -> None:
    proc = warm_entry("json", "sllm.backends.server:prime")
    out, log = tmp_path / "out.json", tmp_path / "instance.log"
    env = {**os.environ, "SLLM_TEST_MARK": "given", "CUDA_VISIBLE_DEVICES": "3"}
    order = {
        "argv": ["-m", "tests.warm_target", "--out", str(out), "x"],
        "env": env,
        "log": str(log),
    }
    proc.communicate(json.dumps(order) + "\n", timeout=30)
    assert proc.returncode == 0
    got = json.loads(out.read_text())
    assert got == {
        "argv": ["--out", str(out), "x"],
        "mark": "given",
        "cuda": "3",
        "stdin": "",  # no input, as the cold path gives
        "name": "__main__",
    }
    assert "to the log" in log.read_text()


def test_a_warm_process_ends_quietly_without_an_order_and_refuses_a_bad_one() -> None:
    proc = warm_entry("json")
    proc.communicate("", timeout=30)
    assert proc.returncode == 0
    proc = warm_entry("json")
    _, err = proc.communicate(
        json.dumps({"argv": ["python", "x"], "env": {}, "log": "/x"}) + "\n", timeout=30
    )
    assert proc.returncode == 2 and "bad instance order" in err


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WarmPool]:
    pool = WarmPool(1, DUMMY_PRIMES, tmp_path / "warm.log", backend_environment())
    pool.start()
    await until(lambda: pool.idle() == 1)
    yield pool
    await pool.close()


async def test_the_pool_refills_and_replaces_what_dies(pool: WarmPool) -> None:
    taken = pool.take()
    assert taken is not None and pool.take() is None
    await until(lambda: pool.idle() == 1)
    taken.kill()
    await taken.wait()
    # Each idle process that dies soon after the last is replaced after a longer pause.
    assert await kill_the_idle_one(pool) >= BACKOFF[0]
    assert await kill_the_idle_one(pool) >= 2 * BACKOFF[0]


async def kill_the_idle_one(pool: WarmPool) -> float:
    """Seconds until the pool has another idle process."""
    [idle] = pool._idle
    os.kill(idle.pid, signal.SIGKILL)
    killed = time.monotonic()
    await until(lambda: pool.idle() == 1 and pool._idle[0].pid != idle.pid)
    return time.monotonic() - killed


async def test_closing_the_pool_leaves_no_process(pool: WarmPool) -> None:
    pids = [p.pid for p in pool._idle]
    await pool.close()
    assert pool.idle() == 0
    assert not any(alive(pid) for pid in pids)


async def test_an_on_demand_pool_fills_once_an_instance_asks(tmp_path: Path) -> None:
    pool = WarmPool(1, DUMMY_PRIMES, tmp_path / "warm.log", backend_environment(), on_demand=True)
    pool.start()
    try:
        await asyncio.sleep(1.0)
        assert pool.idle() == 0 and not warm_children()
        # The first instance starts cold (None); the next finds a process.
        assert await pool.hand_over(["-m", "x"], {}, tmp_path / "i.log") is None
        await until(lambda: pool.idle() == 1)
    finally:
        await pool.close()
    assert pool.idle() == 0 and not warm_children()


async def test_after_a_burst_of_starts_the_pool_keeps_as_many_for_a_while(
    pool: WarmPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = [await pool.hand_over(["-m", "x"], {}, tmp_path / f"{i}.log") for i in range(3)]
    assert taken[0] is not None and taken[1:] == [None, None]  # two started cold
    await until(lambda: pool.idle() == 3)
    # Once the burst is older than the window, back to the pool's size.
    monkeypatch.setattr(warm_demand, "WINDOW", 0.0)
    await until(lambda: pool.idle() == 1)
    await kill_and_reap(taken[0])


async def test_a_pool_that_cannot_start_backs_off(tmp_path: Path) -> None:
    pool = WarmPool(1, ["sllm.no_such_module"], tmp_path / "warm.log", backend_environment())
    pool.start()
    await asyncio.sleep(3)
    assert pool.idle() == 0
    assert "No module named 'sllm.no_such_module'" in (tmp_path / "warm.log").read_text()
    await pool.close()


async def test_an_instance_starts_from_a_warm_process(
    pool: WarmPool, tmp_path: Path, recorder: Recorder
) -> None:
    [warm] = pool._idle
    manager = InstanceManager(tmp_path / "logs", recorder, pools={"sllm": pool})
    try:
        await manager.start("i-1", "m", "dummy", {}, 0, {}, startup_timeout=30)
        await recorder.wait_for("i-1", "ready")
        info = manager.get("i-1")
        assert info is not None and info.pid == warm.pid
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with httpx.AsyncClient(trust_env=False) as client:
            resp = await client.post(f"http://127.0.0.1:{info.port}/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        # The next instance finds the pool refilled.
        await until(lambda: pool.idle() == 1)
        assert manager.warm_idle() == 1
        await manager.stop("i-1")
        assert not alive(warm.pid)
        # No refill while an instance loads: importing would take the CPU it needs.
        await manager.start("i-2", "m", "dummy", {"startup_delay": 2}, 0, {}, startup_timeout=30)
        await asyncio.sleep(1.5)
        loading = manager.get("i-2")
        assert loading is not None and loading.state == "starting"
        assert warm_children() == [loading.pid] and pool.idle() == 0
        await recorder.wait_for("i-2", "ready")
        # Nor in the second after: the new instance's first requests run then.
        await asyncio.sleep(SETTLE / 2)
        assert warm_children() == [loading.pid] and pool.idle() == 0
        await until(lambda: pool.idle() == 1)
    finally:
        await manager.stop_all()


async def test_a_process_priming_when_an_instance_begins_loading_waits_for_the_load(
    tmp_path: Path,
) -> None:
    pool = WarmPool(
        1, ["tests.warm_target:slow_prime"], tmp_path / "warm.log", backend_environment()
    )
    pool.start()
    try:
        await until(lambda: len(warm_children()) == 1)
        [pid] = warm_children()
        pool.loading_began()
        await until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5)
        await asyncio.sleep(2.0)  # longer than its prime: it would be ready by now
        assert pool.idle() == 0 and psutil.Process(pid).status() == psutil.STATUS_STOPPED
        pool.loading_ended()
        await until(lambda: pool.idle() == 1, 10)
        assert pool._idle[0].pid == pid  # the same process, resumed
    finally:
        await pool.close()
    assert not alive(pid)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_every_backend_a_worker_runs_is_primed_once_in_its_own_pool() -> None:
    primes = warm_primes()
    assert len(primes) == len(set(primes))
    assert set(DUMMY_PRIMES) <= set(primes)
    # vLLM's processes fork its engine: they never run what sllm's backends prime.
    vllm = get_backend("vllm")
    assert vllm.warm_pool != "sllm" and not set(vllm.warm_prime) & set(primes)


def test_the_server_prime_leaves_uvicorn_nothing_to_import_when_it_serves() -> None:
    code = textwrap.dedent(
        """
        import sys
        import uvicorn
        from sllm.backends import server
        from sllm.edge.serving import _options

        server.prime()
        before = set(sys.modules)
        app = server.create_app.__globals__["FastAPI"]()
        uvicorn.Config(app, **_options("127.0.0.1", 0, "info", True)).load()
        print(sorted(set(sys.modules) - before))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_warm_heap_is_faulted_in_and_kept_for_the_instance() -> None:
    def resident_mb(env: dict[str, str]) -> float:
        with subprocess.Popen(
            [sys.executable, "-m", "sllm.backends.warm", "sllm.backends.warm_heap:prefault"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, **env},
        ) as proc:
            try:
                assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
                return float(psutil.Process(proc.pid).memory_info().rss) / 2**20
            finally:
                proc.kill()

    heap = warm_heap.environment(256 * 2**20)
    assert heap["MALLOC_ARENA_MAX"] == "1" and warm_heap.environment(0) == {}
    # Freed, the heap stays with the process: its pages, written once, are resident.
    assert resident_mb(heap) - resident_mb({}) > 200


def test_once_the_instance_is_loaded_its_unused_heap_goes_back() -> None:
    """What the instance left of the heap is given back, what it holds stays, and a
    large block freed later goes back too (without ``release`` both would stay)."""
    code = textwrap.dedent(
        """
        import psutil
        from sllm.backends import warm_heap
        def mb():
            return psutil.Process().memory_info().rss / 2**20
        warm_heap.prefault()
        kv_cache = bytearray(b"x" * (64 * 2**20))  # what the instance allocates, from the heap
        loaded = mb()
        warm_heap.release()
        released = mb()
        block = bytearray(100 * 2**20)
        del block
        print(round(loaded), round(released), round(mb()), kv_cache.count(b"x") == len(kv_cache))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, **warm_heap.environment(256 * 2**20)},
    )
    assert out.returncode == 0, out.stderr
    loaded, released, after_block, kept = out.stdout.split()
    assert int(loaded) - int(released) > 150, out.stdout  # 192 MB of the heap unused
    assert int(after_block) - int(released) < 20, out.stdout
    assert kept == "True"
