"""Process-group helpers shared by every owner of child processes (the worker's
instance manager and the local launcher behind ``sllm up``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded in the parent: the child between fork and exec should do as little as possible.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when its parent dies,
    even a parent that is SIGKILLed and never runs its shutdown (Linux only)."""
    libc = _LIBC
    if libc is None:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died before prctl took effect; then nobody would kill us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def open_log(path: Path) -> IO[bytes]:
    """A child's log file, appended to; blocking (open it in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


# Backends run model code (trust_remote_code, vLLM plugins): they get no cluster secret.
_SECRETS = ("SLLM_CLUSTER_TOKEN", "SLLM_API_KEYS", "SLLM_API_KEYS_FILE", "SLLM_ADMIN_KEY")


def backend_environment() -> dict[str, str]:
    """This process's environment without the cluster's secrets: what a backend
    process (or a warm one that will become one) is started with."""
    return {k: v for k, v in os.environ.items() if k not in _SECRETS}


async def kill_and_reap(proc: asyncio.subprocess.Process, wait: float = 5.0) -> None:
    """SIGKILL the process's group and reap it, waiting at most ``wait`` seconds (a
    process stuck in the kernel is reaped by asyncio's child watcher whenever it exits)."""
    signal_group(proc.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(proc.wait(), wait)
    except TimeoutError:
        log.error("process %d survived SIGKILL", proc.pid)
