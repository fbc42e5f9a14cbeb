"""InstanceManager with real backend processes: readiness, stop, crash, timeouts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psutil
import pytest

from sllm.backends import vllm_backend
from sllm.backends.base import Backend, BackendUnavailable, LaunchSpec
from sllm.backends.registry import get_backend
from sllm.worker import hardware, instance_manager, local_instances
from sllm.worker.gpu_assignment import GpuDoesNotFit, GpuMemory
from sllm.worker.instance_manager import InstanceExists, InstanceManager

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


class Recorder:
    """on_state's calls, in order, with a way to wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, instance_id: str, state: str, reason: str) -> None:
        async with self._changed:
            self.calls.append((instance_id, state, reason))
            self._changed.notify_all()

    def states(self, instance_id: str) -> list[str]:
        return [s for i, s, _ in self.calls if i == instance_id]

    async def wait_for(self, instance_id: str, state: str) -> str:
        """The reason given with ``state``."""

        def found() -> bool:
            return state in self.states(instance_id)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(found), WAIT)
        return next(r for i, s, r in self.calls if i == instance_id and s == state)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def manager(tmp_path: Path, recorder: Recorder) -> AsyncIterator[InstanceManager]:
    mgr = InstanceManager(tmp_path / "logs", recorder)
    yield mgr
    await mgr.stop_all(grace=1.0)


@dataclass(frozen=True)
class StubbornChildDummy(Backend):
    """The dummy, started by a shell that first leaves a child ignoring SIGTERM.

    The child shares the backend's process group, so only a SIGKILL to the whole
    group ends it.
    """

    def command(self, spec: LaunchSpec) -> list[str]:
        script = "(trap '' TERM; exec sleep 300) & exec \"$@\""
        return ["/bin/sh", "-c", script, "sh", *super().command(spec)]


@dataclass(frozen=True)
class CrashingBackend(Backend):
    def command(self, spec: LaunchSpec) -> list[str]:
        return [sys.executable, "-c", "import sys; print('boom: no model here'); sys.exit(3)"]


@dataclass(frozen=True)
class ModelPathDummy(Backend):
    """The dummy, launched without the backend_config that names the model's weights."""

    def command(self, spec: LaunchSpec) -> list[str]:
        return super().command(replace(spec, backend_config={}))


def use_backend(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> None:
    monkeypatch.setattr(instance_manager, "get_backend", lambda name: backend)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies waiting for init do not count)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


async def wait_gone(pgid: int) -> None:
    # Orphans are reaped by init, a moment after they die.
    for _ in range(100):
        if not psutil.pid_exists(pgid) and not group_members(pgid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"group {pgid} still has {group_members(pgid)}")


async def start_dummy(
    mgr: InstanceManager, instance_id: str, *, startup_delay: float = 0.3, timeout: float = WAIT
) -> None:
    await mgr.start(
        instance_id,
        model="m",
        backend="dummy",
        backend_config={"startup_delay": startup_delay},
        num_gpus=0,
        lora_adapters={},
        startup_timeout=timeout,
    )


async def test_ready_then_stop_kills_the_process_group(
    manager: InstanceManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, StubbornChildDummy(**vars(get_backend("dummy"))))
    await start_dummy(manager, "i-1")
    info = manager.get("i-1")
    assert info is not None and info.state == "starting" and info.backend == "dummy"
    assert info.log_path.exists()

    assert await recorder.wait_for("i-1", "ready") == ""
    info = manager.get("i-1")
    assert info is not None and info.state == "ready"
    assert manager.port("i-1") == info.port
    assert [i.instance_id for i in manager.list()] == ["i-1"]
    async with httpx.AsyncClient(trust_env=False) as client:
        health = await client.get(f"http://127.0.0.1:{info.port}/health", timeout=5)
    assert health.status_code == 200
    assert len(group_members(info.pid)) == 2  # the backend and its stubborn child

    assert await manager.stop("i-1", grace=1.0) is True
    await wait_gone(info.pid)
    assert recorder.states("i-1") == ["ready", "stopped"]
    assert manager.get("i-1") is None and manager.port("i-1") is None
    assert await manager.stop("i-1") is False


async def test_duplicate_id_is_refused(manager: InstanceManager, recorder: Recorder) -> None:
    await start_dummy(manager, "i-dup")
    with pytest.raises(InstanceExists):
        await start_dummy(manager, "i-dup")
    await recorder.wait_for("i-dup", "ready")


async def test_killed_from_outside_reports_failed(
    manager: InstanceManager, recorder: Recorder
) -> None:
    await start_dummy(manager, "i-2")
    await recorder.wait_for("i-2", "ready")
    info = manager.get("i-2")
    assert info is not None
    os.kill(info.pid, signal.SIGKILL)

    reason = await recorder.wait_for("i-2", "failed")
    assert reason.startswith(f"backend exited with code {-signal.SIGKILL}")
    assert recorder.states("i-2") == ["ready", "failed"]
    assert manager.get("i-2") is None
    await wait_gone(info.pid)


async def test_startup_timeout_fails_and_kills(
    manager: InstanceManager, recorder: Recorder
) -> None:
    await start_dummy(manager, "i-3", startup_delay=10.0, timeout=0.3)
    info = manager.get("i-3")
    assert info is not None

    reason = await recorder.wait_for("i-3", "failed")
    assert "not ready within 0.3 s" in reason
    assert recorder.states("i-3") == ["failed"]
    assert manager.get("i-3") is None
    await wait_gone(info.pid)


async def test_exit_during_startup_fails_with_the_log(
    manager: InstanceManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, CrashingBackend(name="dummy", module="unused"))
    await start_dummy(manager, "i-4")

    reason = await recorder.wait_for("i-4", "failed")
    assert "exited with code 3 during start-up" in reason
    assert "boom: no model here" in reason
    assert manager.list() == []


async def test_stop_during_startup(manager: InstanceManager, recorder: Recorder) -> None:
    await start_dummy(manager, "i-5", startup_delay=10.0)
    info = manager.get("i-5")
    assert info is not None
    assert await manager.stop("i-5", grace=1.0) is True
    await wait_gone(info.pid)
    assert recorder.states("i-5") == ["stopped"]


async def test_unavailable_backend_raises(
    manager: InstanceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm_backend, "vllm_build", lambda: None)  # as where none is installed
    with pytest.raises(BackendUnavailable, match="needs vllm"):
        await manager.start(
            "i-6",
            model="m",
            backend="vllm",
            backend_config={},
            num_gpus=1,
            lora_adapters={},
            startup_timeout=5,
        )
    assert manager.list() == []


async def test_stop_all_refuses_later_starts(manager: InstanceManager, recorder: Recorder) -> None:
    await start_dummy(manager, "i-7")
    await start_dummy(manager, "i-8")
    await recorder.wait_for("i-7", "ready")
    await manager.stop_all(grace=1.0)
    assert manager.list() == []
    assert recorder.states("i-7") == ["ready", "stopped"]
    assert recorder.states("i-8")[-1] == "stopped"
    with pytest.raises(RuntimeError):
        await start_dummy(manager, "i-9")


async def test_gpus_are_assigned_and_a_start_that_does_not_fit_is_refused(
    manager: InstanceManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gib = 1 << 30
    monkeypatch.setattr(
        hardware, "gpu_memory", lambda: [GpuMemory(0, 8 * gib), GpuMemory(1, 40 * gib)]
    )
    use_backend(monkeypatch, ModelPathDummy(**vars(get_backend("dummy"))))
    weights = tmp_path / "model"
    weights.mkdir()
    # A sparse 20 GiB weight file: fits GPU 1 only.
    with (weights / "model.safetensors").open("wb") as f:
        f.truncate(20 * gib)

    async def start(instance_id: str, num_gpus: int) -> None:
        await manager.start(
            instance_id,
            model="m",
            backend="dummy",
            backend_config={"pretrained_model_name_or_path": str(weights)},
            num_gpus=num_gpus,
            lora_adapters={},
            startup_timeout=WAIT,
        )

    with pytest.raises(GpuDoesNotFit, match="needs 3 GPU"):
        await start("too-many", 3)
    await start("big", 1)
    info = manager.get("big")
    assert info is not None
    assert psutil.Process(info.pid).environ()["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(GpuDoesNotFit, match=r"GPU 0 has 8\.0 GiB free"):
        await start("second", 1)
    await manager.stop("big")
    monkeypatch.setenv("SLLM_CLUSTER_TOKEN", "secret-token")
    await start_dummy(manager, "cpu")
    info = manager.get("cpu")
    assert info is not None
    env = psutil.Process(info.pid).environ()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "SLLM_CLUSTER_TOKEN" not in env  # backends get no cluster secret


async def test_a_port_listens_once_something_accepts_on_it() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert await local_instances.listening(port, 1.0)
    server.close()
    await server.wait_closed()
    assert not await local_instances.listening(port, 1.0)


async def start_sleeper(
    mgr: InstanceManager, instance_id: str, num_gpus: int, *extra: str, sleep_mode: bool = True
) -> None:
    """A vLLM instance of the stand-in, in sleep mode."""
    await mgr.start(
        instance_id,
        model="m",
        backend="vllm",
        backend_config={
            "pretrained_model_name_or_path": "org/tiny",
            "sleep_mode": sleep_mode,
            "extra_args": ["--standin-sleep-delay", "0.1", "--standin-wake-delay", "0.1", *extra],
        },
        num_gpus=num_gpus,
        lora_adapters={},
        startup_timeout=WAIT,
    )


async def test_an_instance_sleeps_and_wakes_and_asleep_generates_nothing(
    manager: InstanceManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vllm_backend.ENTRYPOINT_ENV, "tests.vllm_standin")
    await start_sleeper(manager, "s", 0)
    await recorder.wait_for("s", "ready")
    port = manager.port("s")
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await manager.sleep("s")
        assert recorder.states("s") == ["ready", "sleeping"]
        assert [i.instance_id for i in manager.asleep()] == ["s"]
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert (await client.post("/v1/completions", json=body)).status_code == 503
        await manager.sleep("s")  # asleep already: nothing to do
        await manager.wake("s")
        assert recorder.states("s") == ["ready", "sleeping", "ready"]
        assert manager.asleep() == []
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        # A wake of an awake instance (its sleep failed) reports it ready again.
        await manager.wake("s")
        assert recorder.states("s")[-1] == "ready"

    await start_sleeper(manager, "plain", 0, sleep_mode=False)
    await recorder.wait_for("plain", "ready")
    with pytest.raises(BackendUnavailable, match="not started in sleep mode"):
        await manager.sleep("plain")


async def test_an_instance_that_fails_to_sleep_or_wake_is_ended_as_failed(
    manager: InstanceManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vllm_backend.ENTRYPOINT_ENV, "tests.vllm_standin")
    # vLLM without its development mode serves no /sleep: 404.
    monkeypatch.setattr(
        vllm_backend.VllmBackend, "env", lambda self, spec: {"VLLM_SERVER_DEV_MODE": "0"}
    )
    await start_sleeper(manager, "s", 0)
    await recorder.wait_for("s", "ready")
    with pytest.raises(RuntimeError, match="/sleep answered 404"):
        await manager.sleep("s")
    assert "going to sleep failed" in await recorder.wait_for("s", "failed")
    assert manager.get("s") is None

    monkeypatch.undo()
    monkeypatch.setenv(vllm_backend.ENTRYPOINT_ENV, "tests.vllm_standin")
    await start_sleeper(manager, "w", 0)
    await recorder.wait_for("w", "ready")
    await manager.sleep("w")
    info = manager.get("w")
    assert info is not None
    os.kill(info.pid, signal.SIGSTOP)  # a wake that never answers...
    monkeypatch.setattr(instance_manager, "_SLEEP_TIMEOUT", 0.5)
    await manager.wake("w")
    assert "waking failed" in await recorder.wait_for("w", "failed")
    await wait_gone(info.pid)


async def test_a_start_that_needs_a_sleepers_gpu_stops_the_sleeper(
    manager: InstanceManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vllm_backend.ENTRYPOINT_ENV, "tests.vllm_standin")
    monkeypatch.setattr(hardware, "gpu_memory", lambda: [GpuMemory(0, 8 << 30)])
    await start_sleeper(manager, "old", 1)
    await recorder.wait_for("old", "ready")
    # Awake, it keeps its GPU: the start is refused.
    with pytest.raises(GpuDoesNotFit):
        await start_sleeper(manager, "new", 1)
    await manager.sleep("old")
    await start_sleeper(manager, "new", 1)
    reason = await recorder.wait_for("old", "stopped")
    assert reason == "stopped while asleep: its GPUs were needed"
    await recorder.wait_for("new", "ready")
    info = manager.get("new")
    assert info is not None and info.gpus == (0,)
