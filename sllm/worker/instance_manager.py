"""Backend subprocesses: launch, readiness, reaping and killing.

Each backend runs in its own process group (``start_new_session``) so that a stop
reaches whatever the backend forked, and with ``PR_SET_PDEATHSIG`` so that it dies
with the worker even when the worker is SIGKILLed and never runs its shutdown.

One supervisor task per instance reports every state change, so the states reach
``on_state`` in order: "ready" before "failed", and nothing after "stopped".

A ready instance of a backend with a sleep mode (vLLM on GPUs) can be put to sleep and
woken again, one change at a time. Its GPUs stay assigned while it sleeps; a start
that finds no GPU free stops the sleepers that hold them, longest asleep first.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from sllm.backends.base import Backend, BackendUnavailable, LaunchSpec
from sllm.backends.model_source import local_weights_bytes
from sllm.backends.registry import get_backend
from sllm.client.procs import backend_environment, die_with_parent, open_log, signal_group
from sllm.metrics import WorkerMetrics
from sllm.store.peer_fetch import fetch_environment
from sllm.worker import cold_starts, hardware, instance_adapters
from sllm.worker.cpu_cores import choose_cores
from sllm.worker.gpu_assignment import GpuDoesNotFit, choose_gpus, needed_per_gpu
from sllm.worker.local_instances import (
    Entry,
    InstanceExists,
    LocalInstance,
    free_port,
    log_tail,
)
from sllm.worker.readiness import wait_ready
from sllm.worker.warm_pool import WarmPool

log = logging.getLogger(__name__)

OnState = Callable[[str, str, str], Awaitable[None]]
T = TypeVar("T")

# After SIGKILL a process is gone within milliseconds unless stuck in the kernel; we
# stop waiting then, and asyncio's child watcher still reaps it whenever it exits.
_KILL_WAIT = 5.0
# Sleeping copies the weights to host memory and waking copies them back: seconds at
# PCIe speed for the largest models one GPU holds.
_SLEEP_TIMEOUT = 120.0
# Cold starts the heartbeat reports with their phases, newest last.
RECENT_STARTS = 20


class InstanceManager:
    def __init__(
        self,
        log_dir: Path,
        on_state: OnState,
        *,
        storage_path: Path = Path("."),
        metrics: WorkerMetrics | None = None,
        pools: Mapping[str, WarmPool] | None = None,
        cluster_token: str | None = None,
    ) -> None:
        self._log_dir = log_dir
        # Only the store token derived from it reaches a backend (to fetch from peers).
        self._cluster_token = cluster_token
        # Warm processes instances of pooled backends start from, when one is idle: by
        # the pool's name (Backend.warm_pool).
        self._pools = dict(pools or {})
        self._on_state = on_state
        self._storage_path = storage_path
        self._metrics = metrics or WorkerMetrics()
        self._entries: dict[str, Entry] = {}
        # Ids between the existence check and registration (spawning awaits), and the
        # GPUs they will hold.
        self._reserved: set[str] = set()
        self._reserved_gpus: dict[str, tuple[int, ...]] = {}
        self._reserved_cores: dict[str, tuple[int, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        # The latest cold starts and their phases (seconds), for the dashboard.
        self._starts: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_STARTS)

    # -- queries ----------------------------------------------------------------------

    def port(self, instance_id: str) -> int | None:
        entry = self._entries.get(instance_id)
        return entry.info.port if entry else None

    def get(self, instance_id: str) -> LocalInstance | None:
        entry = self._entries.get(instance_id)
        return dataclasses.replace(entry.info) if entry else None

    def recent_starts(self) -> list[dict[str, Any]]:
        """The latest cold starts, newest last: when, which instance, and each phase."""
        return [dict(start) for start in self._starts]

    def asleep(self) -> list[LocalInstance]:
        return [
            dataclasses.replace(e.info)
            for e in self._entries.values()
            if e.info.state == "sleeping"
        ]

    def list(self) -> list[LocalInstance]:
        return [dataclasses.replace(e.info) for e in self._entries.values()]

    def warm_pools(self) -> dict[str, int]:
        """Warm processes ready for an instance, by pool the worker keeps (an on-demand
        pool not asked for yet is none of them)."""
        return {name: pool.idle() for name, pool in self._pools.items() if pool.kept}

    def warm_idle(self) -> int:
        """Warm processes ready for an instance."""
        return sum(pool.idle() for pool in self._pools.values())

    # -- start ------------------------------------------------------------------------

    async def start(
        self,
        instance_id: str,
        model: str,
        backend: str,
        backend_config: dict[str, Any],
        num_gpus: int,
        lora_adapters: dict[str, str],
        startup_timeout: float,
        store_peers: Sequence[str] = (),
    ) -> None:
        """Spawn the backend and return; readiness is reported through on_state.

        Raises InstanceExists (a ValueError) for a known id, BackendUnavailable when
        this machine cannot run ``backend``, GpuDoesNotFit when its GPUs are missing or
        lack free memory, RuntimeError while shutting down.
        """
        if self._closing:
            raise RuntimeError("the worker is shutting down")
        if instance_id in self._entries or instance_id in self._reserved:
            raise InstanceExists(f"instance {instance_id!r} exists already on this worker")
        impl = get_backend(backend)
        reason = impl.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        gpus = await self._assign_gpus(instance_id, backend_config, num_gpus)
        spec = LaunchSpec(
            instance_id=instance_id,
            model=model,
            port=free_port(),
            backend_config=backend_config,
            num_gpus=num_gpus,
            lora_adapters=lora_adapters,
            storage_path=self._storage_path,
            store_peers=tuple(store_peers),
        )
        threads = impl.cpu_threads(spec, os.cpu_count() or 1)
        if threads:
            held = [e.spec.cpu_cores for e in self._entries.values()]
            held += self._reserved_cores.values()
            spec = dataclasses.replace(
                spec, cpu_cores=choose_cores(os.cpu_count() or 1, held, threads)
            )
            log.info("instance %s binds CPU core(s) %s", instance_id, spec.cpu_cores)
        self._reserved.add(instance_id)
        self._reserved_gpus[instance_id] = gpus
        self._reserved_cores[instance_id] = spec.cpu_cores
        self._loading(True)
        try:
            entry = await self._spawn(impl, spec, gpus)
            self._entries[instance_id] = entry
        except BaseException:
            self._loading(False)
            raise
        finally:
            self._reserved.discard(instance_id)
            self._reserved_gpus.pop(instance_id, None)
            self._reserved_cores.pop(instance_id, None)
        entry.supervisor = self._spawn_task(self._supervise(entry, startup_timeout))
        if self._closing:
            # stop_all() took its list while we were spawning.
            await self.stop(instance_id, grace=0)
            raise RuntimeError("the worker is shutting down")

    async def _assign_gpus(
        self, instance_id: str, backend_config: dict[str, Any], num_gpus: int
    ) -> tuple[int, ...]:
        """The GPUs the instance gets: checked against NVML's free memory now."""
        if num_gpus == 0:
            return ()
        source = backend_config.get("pretrained_model_name_or_path")
        weights = (
            await asyncio.to_thread(local_weights_bytes, source)
            if isinstance(source, str)
            else None
        )
        while True:
            readings = await asyncio.to_thread(hardware.gpu_memory)
            # No await from here to the reservation: concurrent starts see each other's GPUs.
            taken = {g for e in self._entries.values() for g in e.gpus}
            taken.update(g for gs in self._reserved_gpus.values() for g in gs)
            try:
                chosen = choose_gpus(readings, taken, num_gpus, needed_per_gpu(weights, num_gpus))
            except GpuDoesNotFit:
                sleeper = self._longest_asleep(with_gpus=True)
                if sleeper is None:
                    raise
                # A sleeper's GPUs are the fastest start it has left; a start needs them now.
                log.info("stopping sleeping instance %s: its GPUs are needed", sleeper)
                await self.stop(sleeper, reason="stopped while asleep: its GPUs were needed")
                continue
            log.info("instance %s gets GPU(s) %s", instance_id, chosen)
            return tuple(chosen)

    def _longest_asleep(self, *, with_gpus: bool = False) -> str | None:
        asleep = [
            e.info
            for e in self._entries.values()
            if e.info.state == "sleeping" and e.ender is None and (e.gpus or not with_gpus)
        ]
        if not asleep:
            return None
        return min(asleep, key=lambda i: (i.asleep_since or 0.0, i.instance_id)).instance_id

    async def _spawn(self, impl: Backend, spec: LaunchSpec, gpus: tuple[int, ...]) -> Entry:
        # Instance ids come from the network: keep them out of path syntax.
        log_path = self._log_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', spec.instance_id)}.log"
        argv = impl.command(spec)
        env = {
            **backend_environment(),
            **impl.env(spec),
            **fetch_environment(spec.store_peers, self._cluster_token),
            # Only the GPUs assigned: none for a CPU instance on a GPU machine.
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
        }
        proc = None
        pool = self._pools.get(impl.warm_pool)
        if pool is not None and impl.primes() and argv[0] == sys.executable:
            proc = await pool.hand_over(argv[1:], env, log_path)
        if proc is not None:
            log.info(
                "starting %s from warm process %d (log %s)", spec.instance_id, proc.pid, log_path
            )
        else:
            log.info("starting %s: %s (log %s)", spec.instance_id, " ".join(argv), log_path)
            proc = await self._spawn_cold(argv, env, log_path)
        return Entry(
            info=LocalInstance(
                instance_id=spec.instance_id,
                model=spec.model,
                backend=impl.name,
                port=spec.port,
                pid=proc.pid,
                state="starting",
                started_at=time.time(),
                log_path=log_path,
                gpus=gpus,
            ),
            proc=proc,
            backend=impl,
            spec=spec,
            exited=self._spawn_task(proc.wait()),
            gpus=gpus,
        )

    @staticmethod
    async def _spawn_cold(
        argv: Sequence[str], env: dict[str, str], log_path: Path
    ) -> asyncio.subprocess.Process:
        log_file = await asyncio.to_thread(open_log, log_path)
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
                env=env,
            )
        finally:
            # The child holds its own descriptor.
            log_file.close()

    def _spawn_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # The loop holds tasks weakly; keep them until they finish.
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- supervision ------------------------------------------------------------------

    def _loading(self, began: bool) -> None:
        # Every pool waits: a refill of any of them takes the CPU the load needs.
        for pool in self._pools.values():
            (pool.loading_began if began else pool.loading_ended)()

    async def _supervise(self, entry: Entry, startup_timeout: float) -> None:
        try:
            why = await wait_ready(entry, startup_timeout)
        finally:
            self._loading(False)
        if entry.ender is not None:
            return
        if why is None:
            entry.info.state = "ready"
            entry.info.ready_at = time.time()
            # Recorded before the report: its first output may come before the figures.
            entry.start = {
                "instance_id": entry.info.instance_id,
                "model": entry.info.model,
                "started_at": entry.info.started_at,
                "ready": entry.info.ready_at - entry.info.started_at,
                "first_token": None,
            }
            self._starts.append(entry.start)
            # Reported first: a request waiting for the instance need not wait for the
            # figures' extra call to the backend.
            await self._report(entry.info.instance_id, "ready", "")
            await cold_starts.observe_start(entry, entry.info.ready_at, self._metrics)
            await asyncio.wait({entry.exited})
            if entry.ender is not None:
                return
            why = f"backend exited with code {entry.proc.returncode}"
        await self._fail(entry, why)

    async def _fail(self, entry: Entry, why: str) -> None:
        """End the instance as failed, unless something else ends it already."""
        if entry.ender is not None:
            return
        entry.ender = asyncio.current_task()
        # Kills a backend that hung in start-up, and whatever an exited one left behind.
        await self._kill(entry, grace=0)
        self._entries.pop(entry.info.instance_id, None)
        tail = await asyncio.to_thread(log_tail, entry.info.log_path)
        log.warning("instance %s failed: %s", entry.info.instance_id, why)
        await self._report(entry.info.instance_id, "failed", f"{why}; last log lines:\n{tail}")

    def first_output(self, instance_id: str) -> None:
        """The instance produced output: its first one ends its cold start."""
        entry = self._entries.get(instance_id)
        if entry is not None:
            cold_starts.first_output(entry, self._metrics)

    async def set_adapters(self, instance_id: str, adapters: dict[str, str]) -> None:
        """Swap a running instance's LoRA adapters (backends that load them at run
        time); BackendUnavailable for the others, KeyError for an unknown id."""
        await instance_adapters.swap(self._entries[instance_id], adapters)

    # -- sleep ------------------------------------------------------------------------

    def sleeps(self, instance_id: str) -> bool:
        """Whether the instance was started in its backend's sleep mode (KeyError: unknown)."""
        entry = self._entries[instance_id]
        return entry.backend.sleeps(entry.spec.backend_config, entry.spec.num_gpus)

    async def sleep(self, instance_id: str) -> None:
        """Put a ready, idle instance to sleep. KeyError for an unknown id,
        BackendUnavailable when it was not started in sleep mode, RuntimeError when it
        is not ready, or its backend did not sleep (it is then ended as failed)."""
        entry = self._entries[instance_id]
        if not self.sleeps(instance_id):
            raise BackendUnavailable(f"instance {instance_id!r} was not started in sleep mode")
        async with entry.changing:
            if entry.info.state == "sleeping":
                return
            if entry.info.state != "ready" or entry.ender is not None:
                raise RuntimeError(f"instance {instance_id!r} is {entry.info.state}, not ready")
            why = await self._sleep_or_wake(entry, "sleep")
            if why is not None:
                raise RuntimeError(why)
            entry.info.state = "sleeping"
            entry.info.asleep_since = time.time()
        await self._report(instance_id, "sleeping", "idle")

    async def _sleep_or_wake(self, entry: Entry, change: Literal["sleep", "wake"]) -> str | None:
        """Have the backend sleep or wake, timed: None once it has, else why not. One
        that failed is ended as failed: half asleep, perhaps, it cannot be trusted."""
        began = time.monotonic()
        call = entry.backend.sleep if change == "sleep" else entry.backend.wake
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=_SLEEP_TIMEOUT) as client:
                await call(client, f"http://127.0.0.1:{entry.spec.port}")
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            why = f"{'going to sleep' if change == 'sleep' else 'waking'} failed: {exc}"
            await self._fail(entry, why)
            return why
        seconds = time.monotonic() - began
        self._metrics.sleep.labels(entry.info.model, change).observe(seconds)
        log.info("instance %s: %s took %.2f s", entry.info.instance_id, change, seconds)
        return None

    def wake_soon(self, instance_id: str) -> None:
        """Wake in the background, reporting through on_state (KeyError: unknown)."""
        if instance_id not in self._entries:
            raise KeyError(instance_id)
        self._spawn_task(self.wake(instance_id))

    async def wake(self, instance_id: str) -> None:
        """Wake a sleeping instance and report it ready; one that failed to wake is
        ended and reported failed. KeyError for an unknown id."""
        entry = self._entries[instance_id]
        async with entry.changing:
            if entry.info.state == "sleeping" and entry.ender is None:
                if await self._sleep_or_wake(entry, "wake") is not None:
                    return
                entry.info.state = "ready"
                entry.info.asleep_since = None
            elif entry.info.state != "ready" or entry.ender is not None:
                return  # ending: its end is reported
        # Also when it never slept (its sleep failed): the head waits for "ready".
        await self._report(instance_id, "ready", "")

    async def _kill(self, entry: Entry, grace: float) -> None:
        """SIGTERM the group and wait up to ``grace``, then SIGKILL the group."""
        pid = entry.proc.pid
        if grace > 0 and not entry.exited.done():
            signal_group(pid, signal.SIGTERM)
            await asyncio.wait({entry.exited}, timeout=grace)
        # Even when the leader is gone: its children share the group and must go too.
        signal_group(pid, signal.SIGKILL)
        await asyncio.wait({entry.exited}, timeout=_KILL_WAIT)
        if not entry.exited.done():
            log.error("backend %s (pid %d) survived SIGKILL", entry.info.instance_id, pid)

    async def _report(self, instance_id: str, state: str, reason: str) -> None:
        try:
            await self._on_state(instance_id, state, reason)
        except Exception:
            # A lost report is repaired by the heartbeat; the supervisor must go on.
            log.exception("reporting %s %s failed", instance_id, state)

    # -- stop -------------------------------------------------------------------------

    async def stop(self, instance_id: str, grace: float = 5.0, reason: str = "") -> bool:
        """Stop an instance; False when it is unknown here."""
        entry = self._entries.get(instance_id)
        if entry is None:
            return False
        if entry.ender is None:
            entry.ender = self._spawn_task(self._stop(entry, grace, reason))
        # Shielded: a cancelled caller must not leave the instance half stopped.
        await asyncio.shield(entry.ender)
        return True

    async def _stop(self, entry: Entry, grace: float, reason: str) -> None:
        await self._kill(entry, grace)
        if entry.supervisor is not None:
            # Lets a "ready" report in flight land before "stopped".
            await asyncio.wait({entry.supervisor}, timeout=_KILL_WAIT)
        self._entries.pop(entry.info.instance_id, None)
        log.info("instance %s stopped%s", entry.info.instance_id, f": {reason}" if reason else "")
        await self._report(entry.info.instance_id, "stopped", reason)

    async def stop_all(self, grace: float = 5.0) -> None:
        """Stop every instance at once; later starts are refused."""
        self._closing = True
        await asyncio.gather(*(self.stop(i, grace) for i in list(self._entries)))
