"""What the instance manager keeps of each backend process, and the small helpers its
start-up uses: a free port, whether the port listens yet, the tail of a failed start's
log."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from sllm.backends.base import Backend, LaunchSpec
from sllm.edge.serving import port_state

LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 8192


class InstanceExists(ValueError):
    """An instance with this id runs here already."""


@dataclasses.dataclass
class LocalInstance:
    instance_id: str
    model: str
    backend: str
    port: int
    pid: int
    state: str  # "starting" | "ready" | "sleeping"
    started_at: float
    log_path: Path
    ready_at: float | None = None
    asleep_since: float | None = None
    gpus: tuple[int, ...] = ()
    # Sampling the instance applies to requests that set none, and the tokens a
    # request may hold, as it reports them.
    sampling_defaults: dict[str, float] = dataclasses.field(default_factory=dict)
    context_length: int | None = None


@dataclasses.dataclass
class Entry:
    info: LocalInstance
    proc: asyncio.subprocess.Process
    backend: Backend
    spec: LaunchSpec
    # proc.wait() as a task, created once, so that several waiters never cancel it.
    exited: asyncio.Task[int]
    supervisor: asyncio.Task[None] | None = None
    # The task that ends the instance (a stop, or the supervisor on failure); set once,
    # and whoever comes second waits for it.
    ender: asyncio.Task[Any] | None = None
    gpus: tuple[int, ...] = ()
    first_output_seen: bool = False
    # Its cold start's record (RECENT_STARTS), once it is ready.
    start: dict[str, Any] = dataclasses.field(default_factory=dict)
    # One sleep or wake at a time.
    changing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


def free_port() -> int:
    # The port may be taken again before the backend binds it; a backend that fails
    # to bind exits, and the start is reported failed.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def listening(port: int, timeout: float) -> bool:
    """Whether something accepts connections on the loopback port."""
    return await port_state("127.0.0.1", port, timeout) == "open"


def log_tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log empty)"
