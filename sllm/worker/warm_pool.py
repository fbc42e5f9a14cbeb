"""A small pool of warm backend processes (``sllm.backends.warm``): Python started,
torch and transformers imported and primed, waiting for an instance to become. A start
that takes one costs loading the weights, not starting an interpreter.

The pool owns its idle processes: it reaps one that dies and starts another, with a
bounded backoff when they keep failing; ``close`` kills them. A refill waits while
instances load, and one already priming when a load begins is paused (SIGSTOP) until
the load is over: both would take the CPU the load needs. A process handed over
belongs to the instance manager from then on. Each runs in its own process group and
dies with the worker, like an instance. It keeps ``size`` processes, more for a while
after starts came in a burst (``warm_demand``), as memory allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from sllm.client.procs import die_with_parent, kill_and_reap, open_log, signal_group
from sllm.worker.warm_demand import MAX_EXTRA, target

log = logging.getLogger(__name__)

Process = asyncio.subprocess.Process

# Importing torch and transformers takes seconds on a busy machine; far longer is a hang.
READY_TIMEOUT = 120.0
# Between failures (a start that never said ready, an idle process that died): doubling
# from the first to the last, and back to the first once one has stayed up STAYS_UP.
BACKOFF = (1.0, 60.0)
STAYS_UP = 60.0
# How often the pool looks for idle processes that died, besides being woken (a look
# reads a return code that asyncio's child watcher set: cheap).
CHECK_INTERVAL = 1.0
# A warm process reads its order at once; one that does not is stuck.
_HANDOVER_WAIT = 5.0
# The longest a refill waits for loading instances (one may never report its end).
QUIET_WAIT = 600.0
# And how long after the last load ended: the new instance's first requests run then,
# and a refill importing torch beside them made the demo model's first token from the
# memory tier 0.1 s later on 2 cores (0.62-0.68 s vs 0.51 s, request to first token).
SETTLE = 1.0
# A pool grows past its size for bursts of starts only while this share of memory stays
# free after one more process.
KEEP_FREE = 0.25


class WarmPool:
    def __init__(
        self,
        size: int,
        primes: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        *,
        on_demand: bool = False,
    ) -> None:
        self.size = size
        # Kept filled only once an instance asked for one (hand_over): a pool for a
        # backend this worker may never run costs nothing until it does.
        self._on_demand = on_demand
        self._started = False
        self._primes = list(primes)
        self._log_path = log_path
        self._env = dict(env)
        self._idle: list[Process] = []
        # When instances asked for a process (hand_over), for sizing to demand.
        self._starts: deque[float] = deque(maxlen=64)
        # Resident bytes of the last process that became ready: what one more costs.
        self._process_bytes = 0
        self._changed = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        # Instances loading now: a refill waits for them, as importing torch would take
        # the CPU their loading needs (it doubled the demo model's start on 2 cores).
        self._loading = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._busy = asyncio.Event()  # the opposite of _quiet: an instance is loading
        self._ended_at = float("-inf")  # time.monotonic() when the last load ended

    def loading_began(self) -> None:
        self._loading += 1
        self._quiet.clear()
        self._busy.set()

    def loading_ended(self) -> None:
        self._loading = max(0, self._loading - 1)
        self._ended_at = time.monotonic()
        if not self._loading:
            self._quiet.set()
            self._busy.clear()

    async def _settled(self) -> None:
        """Until no instance loads and the last load ended SETTLE seconds ago; at most
        QUIET_WAIT (and a SETTLE) in all."""
        deadline = time.monotonic() + QUIET_WAIT
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), max(0.0, deadline - time.monotonic()))
            left = self._ended_at + SETTLE - time.monotonic()
            if left <= 0 or time.monotonic() >= deadline:
                return
            await asyncio.sleep(left)

    @property
    def kept(self) -> bool:
        """Whether the pool keeps itself filled (an on-demand pool: once asked)."""
        return self._keeper is not None

    def idle(self) -> int:
        return sum(1 for p in self._idle if p.returncode is None)

    def start(self) -> None:
        self._started = True
        if self._on_demand:
            return
        self._keep()

    def _keep(self) -> None:
        if self._started and self.size > 0 and self._primes and self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_filled(), name="warm-pool")

    async def _keep_filled(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        last_ready = loop.time()
        while True:
            dead = [p for p in self._idle if p.returncode is not None]
            if dead:
                self._idle = [p for p in self._idle if p.returncode is None]
                for gone in dead:
                    log.warning(
                        "idle warm process %d exited with code %s (see %s)",
                        gone.pid,
                        gone.returncode,
                        self._log_path,
                    )
                failures += 1
                await self._back_off(failures)
                continue
            if failures and loop.time() - last_ready >= STAYS_UP:
                failures = 0
            want = self._target()
            if len(self._idle) > want:  # a burst was forgotten: back to the size
                extra = self._idle.pop()
                await kill_and_reap(extra)
                log.info("warm process %d ended: %d are kept now", extra.pid, want)
                continue
            if len(self._idle) < want:
                # Bounded: a start-up that never reports back must not stop refills.
                await self._settled()
                try:
                    proc = await self._spawn_ready()
                except OSError as exc:  # no fork, no log file: like a failed start
                    log.warning("cannot start a warm process: %s", exc)
                    proc = None
                if proc is None:
                    failures += 1
                    await self._back_off(failures)
                else:
                    last_ready = loop.time()
                    self._idle.append(proc)
                    with contextlib.suppress(psutil.Error):
                        self._process_bytes = psutil.Process(proc.pid).memory_info().rss
                continue
            self._changed.clear()
            # Woken by take(); the timeout notices idle processes that died.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), CHECK_INTERVAL)

    def _target(self) -> int:
        """Processes to keep idle now (warm_demand): room for more beyond the size is
        what memory allows while a quarter of it stays free."""
        memory = psutil.virtual_memory()
        spare = memory.available - memory.total * KEEP_FREE
        room = int(spare // self._process_bytes) if self._process_bytes else MAX_EXTRA
        return target(self.size, self._starts, time.monotonic(), room)

    @staticmethod
    async def _back_off(failures: int) -> None:
        delay = min(BACKOFF[1], BACKOFF[0] * 2 ** (failures - 1))
        log.warning("next warm process in %.0f s", delay)
        await asyncio.sleep(delay)

    async def _spawn_ready(self) -> Process | None:
        """A new warm process once it said ready; None (and it killed) if it did not."""
        log_file = await asyncio.to_thread(open_log, self._log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sllm.backends.warm",
                *self._primes,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
                env=self._env,
            )
        finally:
            log_file.close()  # the child holds its own descriptor
        try:
            ready = await self._primed(proc)
        except asyncio.CancelledError:
            await kill_and_reap(proc)
            raise
        if ready:
            log.debug("warm process %d is ready", proc.pid)
            return proc
        await kill_and_reap(proc)
        log.warning(
            "warm process %d exited or hung before it was ready (see %s)", proc.pid, self._log_path
        )
        return None

    async def _primed(self, proc: Process) -> bool:
        """Whether ``proc`` said ready within READY_TIMEOUT of running time: paused once
        a load begins, until it settles. A worker's first instance began loading beside
        a process its pool had started a moment before, and that import took 6 s of CPU
        from the load on 2 cores (the demo's first start)."""
        said = asyncio.ensure_future(_said_ready(proc))
        busy = asyncio.ensure_future(self._busy.wait())
        try:
            began = time.monotonic()
            await asyncio.wait({said, busy}, timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED")
            if not said.done() and busy.done():
                left = READY_TIMEOUT - (time.monotonic() - began)
                signal_group(proc.pid, signal.SIGSTOP)
                try:
                    await self._settled()  # bounded: QUIET_WAIT
                finally:
                    signal_group(proc.pid, signal.SIGCONT)
                await asyncio.wait({said}, timeout=left)
            return said.done() and said.result()
        finally:
            said.cancel()
            busy.cancel()

    def take(self) -> Process | None:
        """An idle warm process, now, or None; a replacement starts in the background."""
        while self._idle:
            proc = self._idle.pop(0)
            if proc.returncode is None:
                self._changed.set()
                return proc
        return None

    async def hand_over(
        self, argv: list[str], env: Mapping[str, str], log_path: Path
    ) -> Process | None:
        """A warm process turned into the instance ``argv`` (``-m MODULE ...``) with
        ``env``, logging to ``log_path``; None when none is idle or it died meanwhile
        (the caller then starts the instance cold)."""
        self._keep()  # an on-demand pool's first demand
        self._starts.append(time.monotonic())
        proc = self.take()
        if proc is None:
            return None
        assert proc.stdin is not None
        # Created here, as the cold path does, where a failure is the worker's to report.
        await asyncio.to_thread(lambda: open_log(log_path).close())
        order = json.dumps({"argv": argv, "env": dict(env), "log": str(log_path)})
        try:
            proc.stdin.write(order.encode() + b"\n")
            await asyncio.wait_for(proc.stdin.drain(), _HANDOVER_WAIT)
            proc.stdin.close()
        except (OSError, TimeoutError) as exc:
            log.warning("warm process %d did not take its instance: %s", proc.pid, exc)
            await kill_and_reap(proc)
            return None
        return proc

    async def close(self) -> None:
        self._started = False  # a late hand_over starts nothing
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(kill_and_reap(p) for p in idle))


async def _said_ready(proc: Process) -> bool:
    """Whether the process wrote its ready line before its output ended (whatever a
    library printed while priming comes first and is skipped)."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if line.strip() == b"ready":
            return True
    return False
