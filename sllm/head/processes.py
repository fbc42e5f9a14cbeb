"""`sllm head --processes N`: N head processes on one port, so a head uses the cores it
has. Each is a whole head (gateway, dispatcher, autoscaler, bus) with its own id: they
share everything through Redis as heads on different machines do, the autoscaler's
leader lock keeps one of them scaling, and the kernel spreads connections among them
(SO_REUSEPORT). This process only supervises: it restarts a head that dies, a bounded
number of times, and passes SIGTERM and SIGINT on.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from sllm.config import HeadSettings

log = logging.getLogger(__name__)

# More deaths than this within RESTART_WINDOW seconds ends the whole head: it cannot
# start (a port taken, Redis refusing) rather than crashed once.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# What a stopping head may take (requests in flight get 10 s, then the lifespan ends).
STOP_GRACE = 30.0


def supervise(settings: HeadSettings, serve_one: Callable[[HeadSettings], None]) -> None:
    """Run ``settings.processes`` processes of ``serve_one(settings)`` until a signal,
    or until they keep dying; exit 1 then."""
    spawn = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> BaseProcess:
        proc = spawn.Process(target=serve_one, args=(settings,), name=f"sllm-head-{index}")
        proc.start()
        return proc

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        # SIGTERM whatever came: a terminal's Ctrl-C reached the heads already, and a
        # second SIGINT would make uvicorn skip its graceful shutdown.
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    # The handlers first: a signal while the heads start must reach those started.
    procs: list[BaseProcess] = []
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(settings.processes):
        if not stopping:
            procs.append(start(index))
    deaths: deque[float] = deque()
    failed = False
    while not stopping:
        wait([p.sentinel for p in procs], timeout=1.0)
        for index, proc in enumerate(procs):
            if proc.is_alive() or stopping:
                continue
            now = time.monotonic()
            deaths.append(now)
            while deaths and now - deaths[0] > RESTART_WINDOW:
                deaths.popleft()
            if len(deaths) > MAX_RESTARTS:
                log.error(
                    "head processes died %d times within %.0f s: stopping", len(deaths),
                    RESTART_WINDOW,
                )  # fmt: skip
                failed = True
                stop(signal.SIGTERM, None)
                break
            log.warning("head process %s exited (%s): starting another", proc.name, proc.exitcode)
            procs[index] = start(index)
    deadline = time.monotonic() + STOP_GRACE
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            log.warning("head process %s did not stop within %.0f s: killed", proc.name, STOP_GRACE)
            proc.kill()
            proc.join(5.0)
    if failed:
        raise SystemExit(1)
